// Command keelctl is the operator's CLI of a keel node's endpoint: what curl does, for people.
// It reads named contexts from a config file (KEELCONFIG, else ~/.keel/config; `make pki`
// writes build/keelctl.json for the dev node), follows an upgrade across the node's reboot
// (`upgrade --wait`), and says what a failure means and how to fix it.
//
//	keelctl [--config F] [--context N] [-e HOST:PORT] [-o json] COMMAND [flags] [args]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"keel/netapi/client"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailed  = 1 // the node answered: an upgrade aborted or rolled back, a refusal
	exitUsage   = 2
	exitNoReach = 3 // no answer (connection, TLS, timeout)
)

// globals are the flags every command takes, before or after its name.
type globals struct {
	config, context, endpoint, output string
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.config, "config", client.DefaultConfigPath(), "config file (env "+client.ConfigEnv+")")
	fs.StringVar(&g.context, "context", os.Getenv(client.ContextEnv), "context to use (env "+client.ContextEnv+"; default: the config's current)")
	fs.StringVar(&g.endpoint, "e", "", "endpoint host:port, overriding the context's")
	fs.StringVar(&g.output, "o", "", "output: json (default: for people)")
}

// cli is one invocation: where it writes and the node it talks to.
type cli struct {
	g      globals
	out    io.Writer
	errOut io.Writer
	tty    bool // out is a terminal: progress redrawn in place
	name   string
	ctx    client.Context
	c      *client.Client
}

type command struct {
	name, args, help string
	run              func(ctx context.Context, k *cli, fs *flag.FlagSet, args []string) error
	flags            func(fs *flag.FlagSet)
	positional       int // how many arguments it takes (-1: any)
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr, isTerminal(os.Stdout)))
}

// run is keelctl with args; it returns the exit code.
func run(ctx context.Context, args []string, out, errOut io.Writer, tty bool) int {
	k := &cli{out: out, errOut: errOut, tty: tty}
	// Global flags may come before the command.
	pre := flag.NewFlagSet("keelctl", flag.ContinueOnError)
	pre.SetOutput(errOut)
	var preG globals
	preG.register(pre)
	pre.Usage = func() { usage(errOut) }
	if err := pre.Parse(args); err != nil {
		return exitUsage
	}
	if pre.NArg() == 0 {
		usage(errOut)
		return exitUsage
	}
	cmd, ok := commands()[pre.Arg(0)]
	if !ok {
		fmt.Fprintf(errOut, "keelctl: unknown command %q\n", pre.Arg(0))
		usage(errOut)
		return exitUsage
	}
	fs := flag.NewFlagSet("keelctl "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(errOut)
	k.g.register(fs)
	// What the globals were set to before the command stays unless set again after it.
	pre.Visit(func(f *flag.Flag) { fs.Set(f.Name, f.Value.String()) })
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	fs.Usage = func() {
		fmt.Fprintf(errOut, "usage: keelctl %s [flags] %s\n  %s\n", cmd.name, cmd.args, cmd.help)
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, pre.Args()[1:])
	if err != nil {
		return exitUsage
	}
	if cmd.positional >= 0 && len(pos) != cmd.positional {
		fmt.Fprintf(errOut, "keelctl %s: takes %s\n", cmd.name, orNothing(cmd.args))
		fs.Usage()
		return exitUsage
	}
	if k.g.output != "" && k.g.output != "json" {
		fmt.Fprintf(errOut, "keelctl: -o takes json (or nothing, for people), not %q\n", k.g.output)
		return exitUsage
	}
	if err := k.connect(); err != nil {
		fmt.Fprintf(errOut, "keelctl: %v\n", err)
		return exitUsage
	}
	err = cmd.run(ctx, k, fs, pos)
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(errOut, "keelctl %s: %v\n", cmd.name, err)
		return exitUsage
	}
	msg, code := explain(err, k)
	fmt.Fprintf(errOut, "keelctl %s: %s\n", cmd.name, msg)
	return code
}

func orNothing(s string) string {
	if s == "" {
		return "no arguments"
	}
	return s
}

// usageError is a command's complaint about its arguments (exit 2, no explanation).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// parseInterspersed parses flags anywhere among the arguments; it returns the others in order.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// connect picks the context and makes the client.
func (k *cli) connect() error {
	cfg, err := client.LoadConfig(k.g.config)
	if err != nil {
		if errors.Is(err, client.ErrNoConfig) {
			return fmt.Errorf("%v\n  fix: `make pki` writes build/keelctl.json for the dev node: export %s=$PWD/build/keelctl.json (or pass --config)", err, client.ConfigEnv)
		}
		return err
	}
	name, ctx, err := cfg.Pick(k.g.context)
	if err != nil {
		return fmt.Errorf("%s: %v", k.g.config, err)
	}
	if k.g.endpoint != "" {
		ctx.Endpoint = k.g.endpoint
	}
	c, err := ctx.Dial()
	if err != nil {
		return fmt.Errorf("context %q: %v", name, err)
	}
	k.name, k.ctx, k.c = name, ctx, c
	return nil
}

func (k *cli) json() bool { return k.g.output == "json" }

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: keelctl [--config F] [--context N] [-e HOST:PORT] [-o json] COMMAND [flags] [args]")
	fmt.Fprintln(w, "commands:")
	cmds := commands()
	for _, n := range commandOrder {
		c := cmds[n]
		fmt.Fprintf(w, "  %-9s %-28s %s\n", c.name, c.args, c.help)
	}
	fmt.Fprintln(w, "`keelctl COMMAND -h` shows a command's flags. Exit codes: 0 done, 1 failed or refused, 2 usage, 3 no answer.")
}

var commandOrder = []string{"status", "version", "services", "logs", "boots", "events", "dmesg", "upgrade", "activate", "cancel", "rollback", "reboot", "shutdown", "reset"}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0 && !strings.EqualFold(os.Getenv("TERM"), "dumb")
}
