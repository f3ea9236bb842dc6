package remote

import (
	"net/url"
	"testing"
)

// TestForeignURLError: an image from a registry reached over TLS may name
// only https urls on hosts that are not local or private addresses; one
// from an insecure or local registry any http or https url.
func TestForeignURLError(t *testing.T) {
	for _, c := range []struct {
		url      string
		insecure bool
		ok       bool
	}{
		{"https://cdn.example.com/layer.tar.gz", false, true},
		{"https://93.184.216.34/layer", false, true},
		{"http://cdn.example.com/layer.tar.gz", false, false},
		{"https://127.0.0.1/layer", false, false},
		{"https://[::1]:8443/layer", false, false},
		{"https://10.1.2.3/layer", false, false},
		{"https://192.168.1.1/layer", false, false},
		{"https://169.254.169.254/latest/meta-data/", false, false},
		{"https://[fe80::1]/layer", false, false},
		{"https://[::ffff:127.0.0.1]/layer", false, false},
		{"https://0.0.0.0/layer", false, false},
		{"ftp://cdn.example.com/layer", false, false},
		{"file:///etc/passwd", true, false},
		{"https://user:secret@cdn.example.com/layer", false, false},
		{"http://127.0.0.1:5000/layer", true, true},
		{"http://169.254.169.254/", true, true},
		{"https:///layer", true, false},
	} {
		u, err := url.Parse(c.url)
		if err != nil {
			t.Fatal(err)
		}
		if err := foreignURLError(u, c.insecure); (err == nil) != c.ok {
			t.Errorf("%s (insecure registry %v): error %v, want allowed %v", c.url, c.insecure, err, c.ok)
		}
	}
}
