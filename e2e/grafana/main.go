// check-dashboards reads Grafana dashboards (JSON files) into the dashboard model of
// Grafana's foundation SDK, strictly: an unknown field, a wrong type or a panel option the
// panel's plugin does not have is an error, and so is what the model's own validation
// refuses. Usage: check-dashboards FILE...; prints one line per dashboard and exits 1 on
// the first error.
package main

import (
	"fmt"
	"os"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: check-dashboards FILE...")
		os.Exit(2)
	}
	// The panel plugins (timeseries, stat, piechart, table, …) whose options are checked.
	plugins.RegisterDefaultPlugins()
	for _, file := range os.Args[1:] {
		raw, err := os.ReadFile(file)
		if err != nil {
			fail(file, err)
		}
		var board dashboard.Dashboard
		if err := problems(board.UnmarshalJSONStrict(raw)); err != nil {
			fail(file, err)
		}
		if err := problems(board.Validate()); err != nil {
			fail(file, err)
		}
		title := ""
		if board.Title != nil {
			title = *board.Title
		}
		fmt.Printf("%s: %q, %d panels: valid\n", file, title, len(board.Panels))
	}
}

// problems is err, or nil for the SDK's empty list of errors (a nil BuildErrors returned
// as an error is not a nil error).
func problems(err error) error {
	if errs, ok := err.(cog.BuildErrors); ok && len(errs) == 0 {
		return nil
	}
	return err
}

func fail(file string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", file, err)
	os.Exit(1)
}
