package remote

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestParseContentRange(t *testing.T) {
	good := map[string]contentRange{
		"bytes 0-0/1":        {0, 0, 1},
		"bytes 100-199/1000": {100, 199, 1000},
		"bytes 5-9/*":        {5, 9, -1},
		"Bytes 0-9/10":       {0, 9, 10},
		"bytes 0-9223372036854775806/9223372036854775807": {0, 9223372036854775806, 9223372036854775807},
	}
	for h, want := range good {
		got, err := parseContentRange(h)
		if err != nil || got != want {
			t.Errorf("parseContentRange(%q) = %+v, %v; want %+v", h, got, err, want)
		}
	}
	for _, h := range []string{
		"", "bytes", "bytes */1000", "bytes 10-5/100", "bytes 0-100/100", "bytes -1-5/10",
		"bytes +1-5/10", "bytes 1-5", "items 1-5/10", "bytes 1 -5/10", "bytes 0-99999999999999999999/*",
		"bytes 0x1-5/10", "bytes 1-5/10/20", "bytes 1-5/-10",
	} {
		if c, err := parseContentRange(h); err == nil {
			t.Errorf("parseContentRange(%q) = %+v, want an error", h, c)
		}
	}
}

// FuzzParseContentRange: never panics, every accepted header is a sane
// range, and what is accepted round-trips through String.
func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-0/1", "bytes 100-199/1000", "bytes 5-9/*", "bytes */10", "bytes 9-1/3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		c, err := parseContentRange(h)
		if err != nil {
			return
		}
		if c.First < 0 || c.Last < c.First || (c.Size >= 0 && c.Last >= c.Size) || c.Size < -1 {
			t.Fatalf("parseContentRange(%q) accepted insane %+v", h, c)
		}
		again, err := parseContentRange(c.String())
		if err != nil || again != c {
			t.Fatalf("round trip of %q: %+v -> %q -> %+v, %v", h, c, c.String(), again, err)
		}
	})
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	for h, want := range map[string]time.Duration{
		"":                  0,
		"3":                 3 * time.Second,
		"0":                 0,
		"-5":                0,
		"soon":              0,
		"99999999999999999": time.Hour,
		now.Add(7 * time.Second).Format(http.TimeFormat):  7 * time.Second,
		now.Add(-7 * time.Second).Format(http.TimeFormat): 0,
	} {
		if got := parseRetryAfter(h, now); got != want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", h, got, want)
		}
	}
}

func TestBackoffGrowsWithJitterAndCap(t *testing.T) {
	r := retrier{attempts: 10, base: 100 * time.Millisecond}
	for attempt := 1; attempt <= 40; attempt++ {
		full := min(r.base<<min(attempt-1, 20), maxBackoff)
		for range 20 {
			d := r.backoff(attempt)
			if d < full/2 || d > full {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", attempt, d, full/2, full)
			}
		}
	}
	if d := (retrier{base: 0}).backoff(3); d != 0 {
		t.Fatalf("zero base gave %v", d)
	}
}

func TestRedactURL(t *testing.T) {
	u, _ := url.Parse("https://user:pw@bucket.s3.example/blob?X-Amz-Signature=abc&X-Amz-Credential=AKIA")
	got := redactURL(u)
	for _, secret := range []string{"abc", "AKIA", "pw", "user"} {
		if strings.Contains(got, secret) {
			t.Fatalf("redactURL = %q still holds %q", got, secret)
		}
	}
	if !strings.Contains(got, "bucket.s3.example/blob") || !strings.Contains(got, "X-Amz-Signature=REDACTED") {
		t.Fatalf("redactURL = %q lost the useful part", got)
	}
}
