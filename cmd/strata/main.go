package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	flag "github.com/spf13/pflag"

	steprun "github.com/stratafs/strata/internal/run"
)

// command is one subcommand; each lives in its own file.
type command struct {
	name    string
	summary string
	usage   string // after "strata NAME"
	help    string // longer description
	run     func(ctx context.Context, args []string, stdout io.Writer) error
}

var commands = map[string]*command{}

func register(c *command) { commands[c.name] = c }

// errUsage marks errors already explained by printed usage.
var errUsage = errors.New("usage")

// exitStatus makes the process exit with a command's status, printing
// nothing more (strata run passes on the status of what it ran).
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// logLevel is STRATA_LOG_LEVEL (debug, info, warn or error; default
// info). At debug the daemon logs every fetch from a registry: what a
// read missed, what was fetched with it, and how long it took.
func logLevel() slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(os.Getenv("STRATA_LOG_LEVEL"))); err != nil {
		return slog.LevelInfo
	}
	return l
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	// A run's reaper (the build steps' and strata run's containers end
	// with the strata process that runs them, even when it is killed).
	if code, ok := steprun.ReaperMain(args); ok {
		return code
	}
	steprun.EnableReaper()
	slog.SetDefault(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: logLevel()})))
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		if len(args) > 1 {
			if c, ok := commands[args[1]]; ok {
				return runCommand(c, []string{"--help"}, stdout, stderr)
			}
		}
		mainUsage(stdout)
		return 0
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "strata: unknown command %q\n\n", args[0])
		mainUsage(stderr)
		return 2
	}
	return runCommand(c, args[1:], stdout, stderr)
}

func runCommand(c *command, args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := c.run(ctx, args, stdout)
	var status exitStatus
	switch {
	case err == nil:
		return 0
	case errors.As(err, &status):
		return int(status)
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		// Cut short by ^C or SIGTERM, as a shell reports it (128 +
		// SIGINT); the command's own account when it gives one.
		msg := err.Error()
		if msg == context.Canceled.Error() {
			msg = "interrupted"
		}
		fmt.Fprintf(stderr, "strata %s: %s\n", c.name, msg)
		return 130
	}
	fmt.Fprintf(stderr, "strata %s: %v\n", c.name, err)
	return 1
}

func mainUsage(w io.Writer) {
	fmt.Fprint(w, `strata mounts OCI container images without pulling them: file contents are
fetched from the registry by range requests when read, verified, and cached.

Usage: strata COMMAND [OPTIONS] [ARGS]

Commands:
`)
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-9s %s\n", n, commands[n].summary)
	}
	fmt.Fprint(w, "\nRun 'strata COMMAND --help' for a command's options.\n")
}

// flags returns the FlagSet of c, with usage that prints c's help.
func (c *command) flags(stdout io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.Usage = func() {
		fmt.Fprintf(stdout, "Usage: %s\n\n%s\n\nOptions:\n%s", strings.TrimSpace("strata "+c.name+" "+c.usage), c.help, fs.FlagUsages())
	}
	return fs
}

// parse parses args and checks the number of positional arguments
// (maxArgs < 0: no upper bound).
func (c *command) parse(fs *flag.FlagSet, args []string, minArgs, maxArgs int) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		fmt.Fprintf(os.Stderr, "strata %s: %v\nRun 'strata %s --help' for usage.\n", c.name, err, c.name)
		return errUsage
	}
	if n := fs.NArg(); n < minArgs || (maxArgs >= 0 && n > maxArgs) {
		fmt.Fprintf(os.Stderr, "strata %s: wrong number of arguments\nUsage: %s\nRun 'strata %s --help' for more.\n", c.name, strings.TrimSpace("strata "+c.name+" "+c.usage), c.name)
		return errUsage
	}
	return nil
}
