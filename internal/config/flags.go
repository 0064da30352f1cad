package config

import (
	"flag"
)

// Flags are the command-line flags of the configuration: -config names the
// file, and the others override its most common keys and their environment
// variables. A command registers them, parses its arguments, then calls
// Load (or Load, Apply and Validate):
//
//	f := config.RegisterFlags(fs)
//	if err := fs.Parse(args); err != nil { ... }
//	cfg, err := f.Load(os.Getenv)
type Flags struct {
	fs   *flag.FlagSet
	path string
	// overrides are the flags that set a key, by flag name.
	overrides []override
}

type override struct {
	flag, key string
	val       *string
	set       func(c *Config, v string)
}

// RegisterFlags defines the configuration's flags on fs.
func RegisterFlags(fs *flag.FlagSet) *Flags {
	f := &Flags{fs: fs}
	fs.StringVar(&f.path, "config", "", "YAML configuration `file` (optional: the environment variables "+envPrefix+"* can configure everything)")
	def := Default()
	for _, o := range []struct {
		flag, key, usage string
		set              func(c *Config, v string)
	}{
		{"state-dir", "state_dir", "`directory` for staging and local state (default " + def.StateDir + ")",
			func(c *Config, v string) { c.StateDir = v }},
		{"log-level", "log_level", "debug, info, warn or error (default " + def.LogLevel + ")",
			func(c *Config, v string) { c.LogLevel = v }},
		{"http-addr", "http.addr", "`host:port` of the HTTP server (default " + def.HTTP.Addr + ")",
			func(c *Config, v string) { c.HTTP.Addr = v }},
		{"pg-url", "postgres.url", "connection `string` of the platform's PostgreSQL; other users can read a flag in the process list: prefer " +
			keyEnv("postgres.url") + " or postgres.url_file",
			func(c *Config, v string) { c.Postgres.URL = Secret(v) }},
	} {
		val := new(string)
		fs.StringVar(val, o.flag, "", o.usage+" (overrides "+o.key+" and "+keyEnv(o.key)+")")
		f.overrides = append(f.overrides, override{flag: o.flag, key: o.key, val: val, set: o.set})
	}
	return f
}

// ConfigPath returns the value of -config: the file to Load, "" for none.
func (f *Flags) ConfigPath() string { return f.path }

// Apply sets the keys of c whose flags were given on the command line
// (even if empty).
func (f *Flags) Apply(c *Config) {
	given := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	if c.src == nil {
		c.src = &sources{at: map[string]string{}}
	}
	for _, o := range f.overrides {
		if !given[o.flag] {
			continue
		}
		o.set(c, *o.val)
		c.src.set(o.key, "flag -"+o.flag)
		delete(c.src.viaFile, o.key)
	}
	c.derive()
}

// Load loads the configuration from -config and env, applies the flags and
// validates the result.
func (f *Flags) Load(env func(string) string) (*Config, error) {
	c, err := Load(f.path, env)
	if err != nil {
		return nil, err
	}
	f.Apply(c)
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}
