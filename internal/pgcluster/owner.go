package pgcluster

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
)

// osUser is the OS user the server runs as when that is not the current user.
type osUser struct {
	name   string
	uid    int
	gid    int
	groups []int // supplementary groups, primary included
}

// serverUser returns the user to run initdb and postgres as: nil (the
// current user) unless the current user is root, which PostgreSQL refuses;
// then the "postgres" user.
func serverUser() (*osUser, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	return lookupUser("postgres")
}

func lookupUser(name string) (*osUser, error) {
	u, err := user.Lookup(name)
	if err != nil {
		var unknown user.UnknownUserError
		if errors.As(err, &unknown) {
			return nil, fmt.Errorf("running as root, and PostgreSQL refuses root, but there is no %q OS user to run it as: "+
				"install the PostgreSQL server package (it creates the user), e.g. apt-get install postgresql, or run as a non-root user", name)
		}
		return nil, fmt.Errorf("look up OS user %q: %w", name, err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, fmt.Errorf("look up OS user %q: uid %q: %w", name, u.Uid, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, fmt.Errorf("look up OS user %q: gid %q: %w", name, u.Gid, err)
	}
	gids, err := u.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("look up groups of OS user %q: %w", name, err)
	}
	groups := []int{gid}
	for _, g := range gids {
		n, err := strconv.Atoi(g)
		if err != nil {
			return nil, fmt.Errorf("look up groups of OS user %q: gid %q: %w", name, g, err)
		}
		if !slices.Contains(groups, n) {
			groups = append(groups, n)
		}
	}
	return &osUser{name: name, uid: uid, gid: gid, groups: groups}, nil
}

// credential returns the credential for a child process run as u, or nil
// for the current user.
func (u *osUser) credential() *syscall.Credential {
	if u == nil {
		return nil
	}
	groups := make([]uint32, len(u.groups))
	for i, g := range u.groups {
		groups[i] = uint32(g)
	}
	return &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid), Groups: groups}
}

// checkTraversable returns an error naming the first of dir and its parents
// that u cannot enter, so that initdb does not fail later with a vaguer
// "permission denied".
func (u *osUser) checkTraversable(dir string) error {
	for p := filepath.Clean(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("check access for user %s: %w", u.name, err)
		}
		if !u.canEnter(fi) {
			return fmt.Errorf("user %s cannot enter %s (mode %v), which the cluster dir is under: "+
				"choose a base dir under a world-traversable path such as %s", u.name, p, fi.Mode().Perm(), os.TempDir())
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

func (u *osUser) canEnter(fi os.FileInfo) bool {
	perm := fi.Mode().Perm()
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return perm&0o001 != 0
	}
	switch {
	case int(st.Uid) == u.uid:
		return perm&0o100 != 0
	case slices.Contains(u.groups, int(st.Gid)):
		return perm&0o010 != 0
	default:
		return perm&0o001 != 0
	}
}
