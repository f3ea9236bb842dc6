package build

import (
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

func (p *copyPlan) hashSpec(h hash.Hash) {
	fmt.Fprintf(h, "strata build copy v1\ndest %q dir=%t owner=%d:%d add=%t link=%t chown=%t", p.dest, p.destDir, p.UID, p.GID, p.Add, p.Link, p.Chown)
	if p.mode != nil {
		fmt.Fprintf(h, " chmod=%o", *p.mode)
	}
	if p.ChmodSymbolic != "" {
		fmt.Fprintf(h, " chmod=%q", p.ChmodSymbolic)
	}
	if len(p.SourceExcludes) > 0 {
		fmt.Fprintf(h, " exclude=%q", p.SourceExcludes)
	}
	if p.Parents {
		fmt.Fprint(h, " parents")
	}
	if p.KeepOwners {
		fmt.Fprint(h, " keep-owners")
	}
	fmt.Fprintln(h)
}

func (p *copyPlan) hashSource(ctx context.Context, h hash.Hash, src *fsRoot, s *copySource) error {
	if s.url != "" && p.Checksum != "" {
		// The content is what the checksum says, or the copy fails: no
		// download for the key.
		fmt.Fprintf(h, "url %q checksum %s\n", s.url, p.Checksum)
		return nil
	}
	if s.url != "" {
		// The bytes and the time the file will have (Last-Modified), as
		// BuildKit keys an HTTP source; kept for Copy when it can.
		resp, err := httpGet(ctx, s.url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body := sha256.New()
		var w io.Writer = body
		var spool *os.File
		if p.Downloads != nil {
			if spool, err = os.CreateTemp(p.Downloads.Dir, "download-"); err != nil {
				return err
			}
			defer spool.Close()
			w = io.MultiWriter(body, spool)
		}
		size, err := io.Copy(w, resp.Body)
		if err != nil {
			if spool != nil {
				os.Remove(spool.Name())
			}
			return fmt.Errorf("GET %s: %w", redactURL(s.url), err)
		}
		lastModified := resp.Header.Get("Last-Modified")
		if spool != nil {
			p.Downloads.put(s.url, download{path: spool.Name(), lastModified: lastModified})
		}
		fmt.Fprintf(h, "url %q %d %x last-modified %q\n", s.url, size, body.Sum(nil), lastModified)
		return nil
	}
	fmt.Fprintf(h, "source %q\n", s.rel)
	if s.st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return p.hashEntry(h, s.node(src), nil)
	}
	fd, err := unix.Openat(s.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: s.written, Err: err}
	}
	dir := os.NewFile(uintptr(fd), s.written)
	defer dir.Close()
	// Copy keeps hard links within one source: which names share a file
	// is part of what it writes.
	links := map[srcInode]string{}
	walk := p.walker(ctx, s, func(n *srcNode, leaving bool) error {
		if leaving {
			return nil
		}
		return p.hashEntry(h, n, links)
	})
	return walk.walkSource(dir)
}

// hashEntry writes one line for n: kind, path, permission bits, content;
// for a regular file of several links, the first path of the source that
// names its file, kept in links (nil: none are kept).
func (p *copyPlan) hashEntry(h hash.Hash, n *srcNode, links map[srcInode]string) error {
	typ := n.st.Mode & unix.S_IFMT
	fmt.Fprintf(h, "%o %q %o", typ, n.rel, n.st.Mode&0o7777)
	if typ == unix.S_IFREG && n.st.Nlink > 1 && links != nil {
		key := srcInode{uint64(n.st.Dev), n.st.Ino}
		if first, ok := links[key]; ok {
			fmt.Fprintf(h, " link to %q\n", first)
			return nil
		}
		links[key] = n.rel
	}
	if p.KeepOwners {
		fmt.Fprintf(h, " %d:%d", n.st.Uid, n.st.Gid)
	}
	var xattrFd = -1
	switch typ {
	case unix.S_IFREG:
		f, err := n.open()
		if err != nil {
			return err
		}
		defer f.Close()
		body := sha256.New()
		size, err := io.Copy(body, f)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, " %d %x", size, body.Sum(nil))
		xattrFd = int(f.Fd())
	case unix.S_IFLNK:
		target, err := readlinkAt(n.dir, n.name)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, " %q", target)
	case unix.S_IFCHR, unix.S_IFBLK:
		fmt.Fprintf(h, " %d", n.st.Rdev)
	case unix.S_IFDIR:
		if n.file != nil {
			xattrFd = int(n.file.Fd())
		}
	}
	if xattrFd >= 0 {
		xs, err := readXattrs(xattrFd)
		if err != nil {
			return err
		}
		for _, x := range xs {
			fmt.Fprintf(h, " %q=%x", x.name, x.value)
		}
	}
	fmt.Fprintln(h)
	return nil
}
