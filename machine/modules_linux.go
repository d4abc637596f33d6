package machine

import (
	"fmt"

	"github.com/u-root/u-root/pkg/kmodule"
)

// LoadModules loads each module and its dependencies from /lib/modules/$(uname -r), using
// the modules.dep the initramfs carries. It loads all it can and returns every failure, so
// one missing driver does not hide the others.
func LoadModules(names []string) (loaded int, errs []error) {
	p, err := kmodule.NewProber(kmodule.ProbeOpts{})
	if err != nil {
		return 0, []error{fmt.Errorf("load modules: %w", err)}
	}
	for _, n := range names {
		if err := p.Probe(n, ""); err != nil {
			errs = append(errs, fmt.Errorf("load module %s: %w", n, err))
			continue
		}
		loaded++
	}
	return loaded, errs
}
