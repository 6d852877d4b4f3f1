package submit

import "os"

// namelessTemp creates a temporary file in dir and removes its name at once: the open file stays
// usable, and nothing is left behind whatever happens to the process.
func namelessTemp(dir string) (*os.File, error) {
	f, err := os.CreateTemp(dir, "submit-*.eml") // mode 0600
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
