package main

import (
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestPreviewScreenshot renders `preview --html-out` in headless Chromium (Debian's chromium, installed by
// scripts/install-test-deps.sh) as a customer's mail client would show it in a wide window, and checks
// the picture: not blank, and the template's width bounded (the brand banner 600 px wide, centred,
// not stretched across 1200 px).
func TestPreviewScreenshot(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium not found: scripts/install-test-deps.sh installs Debian's chromium package")
	}
	dir := t.TempDir()
	page := filepath.Join(dir, "preview.html")
	if _, stderr, code := runIn(t, dir, "preview", "--channel", "Support", "--user", "demo", "--subject", "Order status",
		"--ticket", "123", "--html-out", page); code != 0 {
		t.Fatalf("preview: exit %d\n%s", code, stderr)
	}
	shot := filepath.Join(dir, "shot.png")
	cmd := exec.Command(chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
		"--user-data-dir="+filepath.Join(dir, "profile"), "--window-size=1200,800", "--screenshot="+shot, "file://"+page)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("chromium: %v\n%s", err, out)
	}
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	b := img.Bounds()
	colours := map[[3]uint32]bool{}
	left, right := b.Max.X, -1 // the extent of the brand banner (#1f4e79)
	for y := b.Min.Y; y < b.Max.Y; y += 2 {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			c := [3]uint32{r >> 8, g >> 8, bl >> 8}
			colours[c] = true
			if near(c, [3]uint32{0x1f, 0x4e, 0x79}) {
				left, right = min(left, x), max(right, x)
			}
		}
	}
	if len(colours) < 20 {
		t.Fatalf("the rendered preview is nearly blank: %d colours", len(colours))
	}
	width := right - left + 1
	if right < 0 || width < 560 || width > 640 {
		t.Fatalf("brand banner spans x=%d..%d (%d px) of %d: want about 600 px", left, right, width, b.Dx())
	}
	if mid := (left + right) / 2; mid < b.Dx()/2-20 || mid > b.Dx()/2+20 {
		t.Errorf("the template is not centred: banner middle at x=%d of %d", mid, b.Dx())
	}
}

func near(a, b [3]uint32) bool {
	for i := range a {
		if d := int(a[i]) - int(b[i]); d < -6 || d > 6 {
			return false
		}
	}
	return true
}
