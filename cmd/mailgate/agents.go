package main

import (
	"fmt"
	"net/netip"

	"github.com/mailgate/mailgate/auth"
	"github.com/mailgate/mailgate/config"
)

// buildDirectory turns the config's roles, users and trusted networks into the agents directory.
func buildDirectory(c *config.Config) (*auth.Directory, error) {
	roles := make([]auth.Role, 0, len(c.Roles))
	for _, r := range c.Roles {
		perms := map[string]auth.Permission{}
		for ch, ps := range r.Channels {
			var p auth.Permission
			for _, s := range ps {
				switch s {
				case "reply":
					p.Reply = true
				case "outbound":
					p.Outbound = true
				case "act_for_agents":
					p.ActForAgents = true
				}
			}
			perms[ch] = p
		}
		roles = append(roles, auth.Role{Name: r.Name, Channels: perms})
	}
	users := make([]auth.User, 0, len(c.Users))
	for _, u := range c.Users {
		users = append(users, auth.User{Login: u.Login, Name: u.Name, PasswordHash: u.PasswordHash, Role: u.Role, BusinessUnit: u.BusinessUnit})
	}
	nets := make([]auth.TrustedNetwork, 0, len(c.TrustedNetworks))
	for i, tn := range c.TrustedNetworks {
		p, err := netip.ParsePrefix(tn.CIDR)
		if err != nil {
			return nil, fmt.Errorf("trusted_networks[%d].cidr: %w", i, err)
		}
		nets = append(nets, auth.TrustedNetwork{Prefix: p, Principal: tn.Principal, Role: tn.Role, BusinessUnit: tn.BusinessUnit})
	}
	return auth.NewDirectory(users, roles, nets)
}
