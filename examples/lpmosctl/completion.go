package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/lpmos/lpmos/task"
)

func completion(fs *flag.FlagSet) runner {
	return func(ctx context.Context, a *app, args []string) error {
		if len(args) != 1 {
			return usagef("give the shell: bash or zsh")
		}
		switch args[0] {
		case "bash":
			return bashCompletion(a.stdout)
		case "zsh":
			// zsh runs the bash function through bashcompinit.
			fmt.Fprint(a.stdout, "#compdef lpmosctl\n# zsh: source <(lpmosctl completion zsh)\nautoload -U +X bashcompinit && bashcompinit\n")
			return bashCompletion(a.stdout)
		}
		return usagef("completion %q: bash or zsh", args[0])
	}
}

// bashCompletion writes a bash completion function generated from the
// command tree, so that it offers exactly the commands and flags this
// binary has.
func bashCompletion(w io.Writer) error {
	var top []string
	subs := map[string][]string{}
	var cases strings.Builder
	for _, c := range commands() {
		words := strings.Fields(c.path)
		if !slices.Contains(top, words[0]) {
			top = append(top, words[0])
		}
		if len(words) == 2 {
			subs[words[0]] = append(subs[words[0]], words[1])
		}
		fs := flag.NewFlagSet(c.path, flag.ContinueOnError)
		new(globals).register(fs)
		c.setup(fs)
		var flags []string
		fs.VisitAll(func(f *flag.Flag) {
			if len(f.Name) == 1 {
				flags = append(flags, "-"+f.Name)
			} else {
				flags = append(flags, "--"+f.Name)
			}
		})
		fmt.Fprintf(&cases, "    %q) words=%q ;;\n", c.path, strings.Join(flags, " "))
	}
	var subCases strings.Builder
	for _, t := range top {
		if s := subs[t]; len(s) > 0 {
			fmt.Fprintf(&subCases, "    %q) words=%q ;;\n", t, strings.Join(s, " "))
		}
	}
	var statuses []string
	for _, s := range task.Statuses() {
		statuses = append(statuses, string(s))
	}
	_, err := fmt.Fprintf(w, `# bash completion for lpmosctl: source <(lpmosctl completion bash)
_lpmosctl() {
  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} cmd="" words="" i n=0
  case "$prev" in
    --status|-status) COMPREPLY=($(compgen -W %q -- "$cur")); return ;;
    -o|--output|-output) COMPREPLY=($(compgen -W "table json" -- "$cur")); return ;;
  esac
  # The command is the first one or two words that are not flags (or a
  # global flag's value).
  for ((i = 1; i < COMP_CWORD && n < 2; i++)); do
    case "${COMP_WORDS[i]}" in
      -o|--output|-output|--url|-url|--token|-token|--timeout|-timeout) i=$((i + 1)) ;; # and its value
      -*) ;;
      *) cmd="${cmd:+$cmd }${COMP_WORDS[i]}"; n=$((n + 1)) ;;
    esac
  done
  if [[ "$cur" == -* ]]; then
    case "$cmd" in
%s    *) words="--url --token -o --output --timeout" ;;
    esac
  elif [[ -z "$cmd" ]]; then
    words=%q
  elif [[ "$cmd" == completion ]]; then
    words="bash zsh"
  elif [[ $n -eq 1 ]]; then
    case "$cmd" in
%s    esac
  fi
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -F _lpmosctl lpmosctl
`, strings.Join(statuses, " "), cases.String(), strings.Join(append(top, "help"), " "), subCases.String())
	return err
}
