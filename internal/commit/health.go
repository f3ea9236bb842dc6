package commit

import (
	"encoding/json"
	"reflect"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"

	"github.com/stratafs/strata/remote"
)

// A health check's start interval (HEALTHCHECK --start-interval, Docker
// 25) is kept in the image config where Docker and BuildKit keep it,
// config.Healthcheck.StartInterval. go-containerregistry's config model,
// Strata's image model, has no field for it, so the config is written
// through healthConfigFile below when there is one, and the image Build
// returns carries that config (remote.WithRawConfig). Everything else about the
// config stays the model's.

// HealthStartInterval returns the start interval the last HEALTHCHECK of
// changes sets (0 for one without, and for HEALTHCHECK NONE), and whether
// any of them is a HEALTHCHECK.
func HealthStartInterval(changes []Change) (time.Duration, bool) {
	var d time.Duration
	found := false
	for _, c := range changes {
		if hc, ok := c.cmd.(*instructions.HealthCheckCommand); ok {
			d, found = HealthStart(hc), true
		}
	}
	return d, found
}

// HealthStart is the start interval HEALTHCHECK c sets (0 for none, and
// for HEALTHCHECK NONE).
func HealthStart(c *instructions.HealthCheckCommand) time.Duration {
	if c.Health == nil || len(c.Health.Test) > 0 && c.Health.Test[0] == "NONE" {
		return 0
	}
	return c.Health.StartInterval
}

// healthcheck is the config's Healthcheck as Docker writes it.
type healthcheck struct {
	Test          []string      `json:",omitempty"`
	Interval      time.Duration `json:",omitempty"`
	Timeout       time.Duration `json:",omitempty"`
	StartPeriod   time.Duration `json:",omitempty"`
	StartInterval time.Duration `json:",omitempty"`
	Retries       int           `json:",omitempty"`
}

// healthConfig and healthConfigFile are the model's config with the
// Healthcheck above in place of the model's.
type healthConfig struct {
	v1.Config
	Healthcheck *healthcheck `json:",omitempty"`
}

type healthConfigFile struct {
	v1.ConfigFile
	Config healthConfig `json:"config"`
}

// baseStartInterval reads the start interval of the health check in a
// raw image config (0 when it has none, or cannot say).
func baseStartInterval(raw []byte) time.Duration {
	var cf struct {
		Config struct {
			Healthcheck *healthcheck
		} `json:"config"`
	}
	if json.Unmarshal(raw, &cf) != nil || cf.Config.Healthcheck == nil {
		return 0
	}
	return max(cf.Config.Healthcheck.StartInterval, 0)
}

// startInterval decides the new image's start interval: set is the one a
// HEALTHCHECK of the commit gave (nil: none did); otherwise the base's,
// when the health check is still the base's.
func startInterval(set *time.Duration, baseRaw []byte, base, now *v1.HealthConfig) time.Duration {
	if set != nil {
		return max(*set, 0)
	}
	if now == nil || !reflect.DeepEqual(base, now) {
		return 0
	}
	return baseStartInterval(baseRaw)
}

// withStartInterval returns img with its config's health check given
// start interval d, when d is not 0 and the config has a health check;
// img itself otherwise.
func withStartInterval(img v1.Image, d time.Duration) (v1.Image, error) {
	if d <= 0 {
		return img, nil
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	h := cf.Config.Healthcheck
	if h == nil || len(h.Test) > 0 && h.Test[0] == "NONE" {
		return img, nil
	}
	out := healthConfigFile{ConfigFile: *cf, Config: healthConfig{Config: cf.Config, Healthcheck: &healthcheck{
		Test: h.Test, Interval: h.Interval, Timeout: h.Timeout, StartPeriod: h.StartPeriod,
		StartInterval: d, Retries: h.Retries,
	}}}
	raw, err := json.Marshal(out)
	if err != nil {
		return nil, err
	}
	return remote.WithRawConfig(img, raw)
}
