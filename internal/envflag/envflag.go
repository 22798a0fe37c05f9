// Package envflag gives the commands' flags environment-variable fallbacks:
// every flag --some-name may also be set as IM_SOME_NAME, and an explicit
// flag on the command line wins.
package envflag

import (
	"flag"
	"fmt"
	"strings"
)

// Key returns the environment variable of a flag: "IM_" + the upper-cased
// name with dashes as underscores.
func Key(name string) string { return "IM_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_")) }

// Parse sets every flag of fs that has a non-empty IM_* variable in getenv,
// then parses args (so flags override the environment), and rejects
// positional arguments. A malformed value names its variable in the error.
func Parse(fs *flag.FlagSet, args []string, getenv func(string) string) error {
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		key := Key(f.Name)
		if v := getenv(key); v != "" {
			if err := f.Value.Set(v); err != nil && envErr == nil {
				envErr = fmt.Errorf("%s=%q: %w", key, v, err)
			}
		}
	})
	if envErr != nil {
		return envErr
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	return nil
}
