package fs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// A conn serves one FUSE connection: it reads requests from /dev/fuse,
// has go-fuse's ProtocolServer decode them and call the layer's raw
// filesystem, and writes the replies back.
//
// This loop is Strata's own rather than go-fuse's Server because a
// connection must outlive the process serving it (see docs/architecture.md,
// "Restarts"): go-fuse's Server only serves connections it mounted or that
// are new (it waits for INIT), while a conn can also take over a live one.
// It keeps the INIT request the kernel sent at mount; a process taking
// over replays it into its own ProtocolServer, so both agree on what was
// negotiated, and then asks the kernel to send again the requests the
// previous process read but never answered (FUSE_NOTIFY_RESEND, Linux
// 6.9+). On older kernels those requests are failed with EIO instead, once,
// from a table of unanswered requests kept in a shared file mapping that
// survives the process.
type conn struct {
	dev *os.File // /dev/fuse, non-blocking: reads wait in Go's poller
	fd  int
	ps  *fuse.ProtocolServer
	// local says whether a READ (node ID, offset, size) will be answered
	// without waiting for the network; nil for never.
	local func(ino, off uint64, size uint32) bool

	init  []byte // the INIT request of the connection
	flags uint64 // capabilities agreed at INIT
	// kernelFlags are the capabilities the kernel offered at INIT.
	kernelFlags uint64
	initDone    chan struct{}
	initOnce    sync.Once

	pending  *pendingTable
	handlers sync.WaitGroup
	// seq counts the requests the loop has read (see layerFS.push).
	seq atomic.Uint64
	// beforeHandle, a test hook, runs in the loop before each request.
	beforeHandle atomic.Pointer[func(op uint32)]
	// mute makes the conn stop writing, as a process that died would;
	// tests use it to leave requests unanswered.
	mute atomic.Bool
	done chan struct{} // closed when the read loop has ended
	// stopped is set when the loop ended for a handover, not an unmount;
	// stopping once stop has begun.
	stopped, stopping atomic.Bool
}

// Opcodes this file looks at (see the kernel's fuse.h).
const (
	opForget      = 2
	opRead        = 15
	opGetxattr    = 22
	opListxattr   = 23
	opInit        = 26
	opReaddir     = 28
	opInterrupt   = 36
	opBatchForget = 42
	opReaddirplus = 44

	inHeaderSize  = 40
	outHeaderSize = 16

	// notifyResend is FUSE_NOTIFY_RESEND; capHasResend is the INIT flag
	// (FUSE_HAS_RESEND) of a kernel that knows it.
	notifyResend = 7
	// notifyStore is FUSE_NOTIFY_STORE: data for an inode's page cache.
	notifyStore = 4
	// notifyInvalInode is FUSE_NOTIFY_INVAL_INODE: drop an inode's
	// cached attributes and pages.
	notifyInvalInode = 2
	capHasResend     = 1 << 39

	// connMaxWrite is the max_write the INIT reply gives the kernel. A
	// read-only layer gets no WRITE, and the kernel wants every read of
	// /dev/fuse to have room for the biggest one, so a small max_write
	// keeps request buffers at 8 KiB. READ sizes are set by max_pages,
	// which stays at 1 MiB.
	connMaxWrite = 4096
	// requestBufSize fits every request of a read-only layer (the kernel
	// asks for max(8 KiB, header + WRITE header + max_write)).
	requestBufSize = 8192
	// maxReadSize is the biggest READ (and listing) the kernel asks for.
	maxReadSize = 1 << 20

	ioctlBackingOpen  = 0x4010e501 // FUSE_DEV_IOC_BACKING_OPEN
	ioctlBackingClose = 0x4004e502 // FUSE_DEV_IOC_BACKING_CLOSE
)

// protocolOptions are the options the ProtocolServer negotiates INIT
// with: the same in every process that serves a connection.
func protocolOptions(passthrough bool) *fuse.MountOptions {
	o := &fuse.MountOptions{
		Name:          fsName,
		MaxWrite:      maxReadSize, // sets max_pages; see connMaxWrite
		MaxReadAhead:  1 << 20,
		MaxBackground: 64,
		// The kernel then caches ACLs, so "ls -l" does not ask the
		// daemon for system.posix_acl_* on every file, every time.
		EnableAcl:         true,
		ExtraCapabilities: fuse.CAP_NO_OPENDIR_SUPPORT,
		// MaxStackDepth stays at its default, 1: backing files must be
		// on an unstacked filesystem, and overlayfs can still be
		// mounted over this mount (the kernel allows two levels).
		Logger: slog.NewLogLogger(slog.Default().Handler(), slog.LevelDebug),
	}
	if !passthrough {
		// Passthrough makes the kernel count the mount as one level of
		// stacking; without whole files there is nothing to gain for it.
		o.DisabledCapabilities = fuse.CAP_PASSTHROUGH
	}
	return o
}

// newConn serves fsys on the connection of dev (which it owns from now
// on), keeping its table of unanswered requests at pendingPath ("" for
// none).
func newConn(dev *os.File, fsys fuse.RawFileSystem, passthrough bool, pendingPath string) (*conn, error) {
	// A descriptor of our own, non-blocking, so that reads wait in Go's
	// poller rather than each holding a thread.
	fd, err := unix.FcntlInt(dev.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	dev.Close()
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	pollable := os.NewFile(uintptr(fd), "/dev/fuse")
	c := &conn{
		dev:      pollable,
		fd:       fd,
		ps:       fuse.NewProtocolServer(fsys, protocolOptions(passthrough)),
		initDone: make(chan struct{}),
		done:     make(chan struct{}),
	}
	if c.pending, err = openPendingTable(pendingPath); err != nil && pendingPath != "" {
		// The layer is served all the same; a daemon taking the
		// connection over then knows nothing of the reads this one left
		// unanswered (see takeOver).
		slog.Warn("fs: unanswered requests not kept for a restart", "path", pendingPath, "error", err)
		c.pending, err = openPendingTable("")
	}
	if err != nil {
		c.dev.Close()
		return nil, err
	}
	return c, nil
}

// serve reads and answers requests until the connection ends or stop.
func (c *conn) serve() {
	defer close(c.done)
	for {
		buf := requestBufs.Get().(*[]byte)
		n, err := c.read(*buf)
		if err != nil {
			requestBufs.Put(buf)
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded):
				c.stopped.Store(true)
				return // stop: the connection is handed over
			case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.EINTR):
				continue // a request interrupted before it was read
			case errors.Is(err, syscall.ENODEV):
				return // unmounted or aborted
			}
			slog.Error("fs: reading FUSE requests failed; the layer is no longer served", "error", err)
			return
		}
		if n < inHeaderSize {
			requestBufs.Put(buf)
			slog.Error("fs: FUSE request too short", "bytes", n)
			continue
		}
		c.seq.Add(1)
		if hook := c.beforeHandle.Load(); hook != nil {
			(*hook)(binary.LittleEndian.Uint32((*buf)[4:8]))
		}
		c.handlers.Add(1)
		if c.inline((*buf)[:n]) {
			c.handle(buf, n)
			continue
		}
		go c.handle(buf, n)
	}
}

// spinFor is how long read keeps asking for the next request before it
// waits in Go's poller.
const spinFor = 50 * time.Microsecond

// read reads the next request. A walk sends one request right after
// another (a file's LOOKUP, its READ, the next file's LOOKUP), each a few
// microseconds after the last reply; reading again at once for spinFor
// takes it without waking a thread parked in the poller, which costs more
// than answering it (most on a virtual machine, where the wake-up is an
// interrupt to another CPU). Then it waits in the poller. Not once stop
// has begun: the deadline it sets must end the loop.
func (c *conn) read(buf []byte) (int, error) {
	if !c.stopping.Load() {
		deadline := time.Now().Add(spinFor)
		for {
			n, err := unix.Read(c.fd, buf)
			if !errors.Is(err, unix.EAGAIN) {
				if err != nil {
					return 0, err
				}
				return n, nil
			}
			if c.stopping.Load() || time.Now().After(deadline) {
				break
			}
			runtime.Gosched() // whatever else is runnable goes first
		}
	}
	return c.dev.Read(buf)
}

// inline says whether request in is answered in the read loop: those
// answered from the index and the cache alone, for which a goroutine of
// their own would cost more than they do (a handoff to another thread,
// a stack grown anew, and a handoff back); INIT too, so that every later
// request is handled after it, with what it negotiated. A READ that may
// wait for the network gets a goroutine, so that other requests go on.
func (c *conn) inline(in []byte) bool {
	op := binary.LittleEndian.Uint32(in[4:8])
	if op != opRead {
		return true
	}
	// fuse_read_in after the header: fh u64, offset u64, size u32.
	if c.local == nil || len(in) < inHeaderSize+20 {
		return false
	}
	ino := binary.LittleEndian.Uint64(in[16:24])
	off := binary.LittleEndian.Uint64(in[inHeaderSize+8:])
	size := binary.LittleEndian.Uint32(in[inHeaderSize+16:])
	return c.local(ino, off, size)
}

var requestBufs = sync.Pool{New: func() any { b := make([]byte, requestBufSize); return &b }}

// Reply buffers: room for the header, the reply's fixed part (4 KiB is
// more than any) and the payload the request asks for; small ones for
// every request asking for at most 4 KiB (listings, xattrs, links), big
// ones for READs.
const smallPayload = 4096

var replyBufs = sync.Pool{New: func() any { b := make([]byte, outHeaderSize+4096+maxReadSize); return &b }}
var smallReplyBufs = sync.Pool{New: func() any { b := make([]byte, outHeaderSize+4096+smallPayload); return &b }}

// handle answers one request.
func (c *conn) handle(buf *[]byte, n int) {
	defer c.handlers.Done()
	defer requestBufs.Put(buf)
	in := (*buf)[:n]
	op := binary.LittleEndian.Uint32(in[4:8])
	unique := binary.LittleEndian.Uint64(in[8:16])
	countRequest(op)
	noReply := op == opForget || op == opBatchForget
	slot := -1
	if !noReply && op != opInterrupt {
		slot = c.pending.add(unique)
	}
	pool := &smallReplyBufs
	if replySize(op, in) > smallPayload {
		pool = &replyBufs
	}
	outBuf := pool.Get().(*[]byte)
	defer pool.Put(outBuf)
	out := *outBuf
	written, st := c.ps.HandleRequest([][]byte{in}, [][]byte{out})
	switch {
	case !st.Ok() && !noReply:
		// The request could not be decoded: the kernel still waits.
		written = outHeaderSize
		binary.LittleEndian.PutUint32(out[0:4], outHeaderSize)
		binary.LittleEndian.PutUint32(out[4:8], uint32(errEIO))
		binary.LittleEndian.PutUint64(out[8:16], unique)
	case op == opInit:
		c.initialized(in, out[:written])
	}
	if debugConn {
		slog.Info("fs: fuse", "op", op, "unique", unique, "written", written, "status", st)
	}
	if written > 0 && !c.mute.Load() {
		if _, err := unix.Write(c.fd, out[:written]); err != nil && !errors.Is(err, syscall.ENOENT) {
			// ENOENT: the request was interrupted and is gone.
			slog.Warn("fs: writing a FUSE reply failed", "opcode", op, "error", err)
		}
	}
	if slot >= 0 && !c.mute.Load() {
		c.pending.remove(slot)
	}
}

// storeOutSize is the size of fuse_notify_store_out: nodeid u64, offset
// u64, size u32, padding.
const storeOutSize = 24

// storeHeader is the room before the data of a store message.
const storeHeader = outHeaderSize + storeOutSize

// store puts the data in msg[storeHeader:], the content of inode ino from
// offset 0, in the kernel's page cache for that inode (FUSE_NOTIFY_STORE),
// so that reads of it need no READ. The kernel refuses it (ENOENT) for an
// inode it does not hold.
func (c *conn) store(ino uint64, msg []byte) error {
	binary.LittleEndian.PutUint32(msg[0:4], uint32(len(msg)))
	binary.LittleEndian.PutUint32(msg[4:8], notifyStore)
	binary.LittleEndian.PutUint64(msg[8:16], 0)
	binary.LittleEndian.PutUint64(msg[outHeaderSize:], ino)
	binary.LittleEndian.PutUint64(msg[outHeaderSize+8:], 0)
	binary.LittleEndian.PutUint32(msg[outHeaderSize+16:], uint32(len(msg)-storeHeader))
	binary.LittleEndian.PutUint32(msg[outHeaderSize+20:], 0)
	if c.mute.Load() {
		return nil
	}
	_, err := unix.Write(c.fd, msg)
	return err
}

// invalInode drops the kernel's cached pages and attributes of inode ino
// (FUSE_NOTIFY_INVAL_INODE), so that its next read asks the daemon. The
// kernel answers ENOENT for an inode it does not hold, which is no error
// here.
func (c *conn) invalInode(ino uint64) error {
	var msg [outHeaderSize + 24]byte // fuse_notify_inval_inode_out: ino u64, off s64, len s64
	binary.LittleEndian.PutUint32(msg[0:4], uint32(len(msg)))
	binary.LittleEndian.PutUint32(msg[4:8], notifyInvalInode)
	binary.LittleEndian.PutUint64(msg[outHeaderSize:], ino)
	binary.LittleEndian.PutUint64(msg[outHeaderSize+8:], 0)
	binary.LittleEndian.PutUint64(msg[outHeaderSize+16:], 0) // 0 and 0: everything
	if c.mute.Load() {
		return nil
	}
	if _, err := unix.Write(c.fd, msg[:]); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}

// replySize is the payload size a request asks for at most.
func replySize(op uint32, in []byte) int {
	switch op {
	case opRead, opReaddir, opReaddirplus:
		// fuse_read_in: fh u64, offset u64, size u32.
		if len(in) >= inHeaderSize+20 {
			return int(binary.LittleEndian.Uint32(in[inHeaderSize+16:]))
		}
	case opGetxattr, opListxattr:
		// fuse_getxattr_in: size u32.
		if len(in) >= inHeaderSize+4 {
			return int(binary.LittleEndian.Uint32(in[inHeaderSize:]))
		}
	}
	return 0
}

// initialized notes what INIT agreed and lowers the max_write of its
// reply (see connMaxWrite).
func (c *conn) initialized(in, reply []byte) {
	if len(reply) >= outHeaderSize+int(unsafe.Sizeof(fuse.InitOut{})) &&
		binary.LittleEndian.Uint32(reply[4:8]) == 0 {
		out := reply[outHeaderSize:]
		binary.LittleEndian.PutUint32(out[unsafe.Offsetof(fuse.InitOut{}.MaxWrite):], connMaxWrite)
		c.flags = uint64(binary.LittleEndian.Uint32(out[unsafe.Offsetof(fuse.InitOut{}.Flags):])) |
			uint64(binary.LittleEndian.Uint32(out[unsafe.Offsetof(fuse.InitOut{}.Flags2):]))<<32
	}
	if len(in) >= inHeaderSize+16 { // major, minor, max_readahead, flags
		var ii fuse.InitIn
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&ii)), unsafe.Sizeof(ii)), in)
		c.kernelFlags = ii.Flags64()
	}
	c.init = append([]byte(nil), in...)
	c.initOnce.Do(func() { close(c.initDone) })
}

// waitInit waits for the kernel's INIT after a mount.
func (c *conn) waitInit(timeout time.Duration) error {
	select {
	case <-c.initDone:
		return nil
	case <-c.done:
		return errors.New("the FUSE connection ended before INIT")
	case <-time.After(timeout):
		return fmt.Errorf("no INIT from the kernel in %s", timeout)
	}
}

// takeOver makes c serve a connection another process served, whose
// INIT request was init: the ProtocolServer is brought to the state the
// INIT left, and the requests the previous process read but did not
// answer are sent again by the kernel, or failed with EIO where it cannot
// (see conn). It returns how many were failed, and what happened to them
// for the log.
func (c *conn) takeOver(init []byte) (int, string, error) {
	if len(init) < inHeaderSize || binary.LittleEndian.Uint32(init[4:8]) != opInit {
		return 0, "", errors.New("the saved INIT request is not one")
	}
	out := make([]byte, outHeaderSize+4096)
	n, st := c.ps.HandleRequest([][]byte{init}, [][]byte{out})
	if !st.Ok() || n < outHeaderSize || binary.LittleEndian.Uint32(out[4:8]) != 0 {
		return 0, "", fmt.Errorf("replaying the saved INIT request: %v", st)
	}
	c.initialized(init, out[:n]) // not written: the kernel has its reply
	lost := c.pending.drain()
	if c.kernelFlags&capHasResend != 0 && !forceNoResend.Load() {
		var hdr [outHeaderSize]byte
		binary.LittleEndian.PutUint32(hdr[0:4], outHeaderSize)
		binary.LittleEndian.PutUint32(hdr[4:8], notifyResend)
		if _, err := unix.Write(c.fd, hdr[:]); err == nil {
			return 0, fmt.Sprintf("kernel asked to resend %d unanswered requests", len(lost)), nil
		} else {
			slog.Warn("fs: FUSE_NOTIFY_RESEND refused; failing unanswered requests instead", "error", err)
		}
	}
	var hdr [outHeaderSize]byte
	failed := 0
	for _, unique := range lost {
		binary.LittleEndian.PutUint32(hdr[0:4], outHeaderSize)
		binary.LittleEndian.PutUint32(hdr[4:8], uint32(errEIO))
		binary.LittleEndian.PutUint64(hdr[8:16], unique)
		if _, err := unix.Write(c.fd, hdr[:]); err == nil {
			failed++
		}
	}
	return failed, fmt.Sprintf("%d unanswered requests failed with EIO (kernel without FUSE_NOTIFY_RESEND)", failed), nil
}

var debugConn = os.Getenv("STRATA_FUSE_DEBUG") != ""

// errEIO is the error field of a reply failing with EIO.
var errEIO = -int32(syscall.EIO)

// forceNoResend makes takeOver act as on a kernel without
// FUSE_NOTIFY_RESEND, for tests.
var forceNoResend atomic.Bool

// stop ends the read loop without ending the connection and waits for
// the requests read so far to be answered: the connection is then the
// next process's to serve.
func (c *conn) stop() {
	c.stopping.Store(true)
	c.dev.SetReadDeadline(time.Now())
	<-c.done
	c.handlers.Wait()
}

// close closes this process's descriptor of the connection once the loop
// has ended and every request read has been answered.
func (c *conn) close() {
	<-c.done
	c.handlers.Wait()
	c.dev.Close()
	c.pending.close()
}

func (c *conn) registerBacking(f *os.File) (int32, syscall.Errno) {
	m := fuse.BackingMap{Fd: int32(f.Fd())}
	id, _, en := unix.Syscall(unix.SYS_IOCTL, uintptr(c.fd), ioctlBackingOpen, uintptr(unsafe.Pointer(&m)))
	return int32(id), en
}

func (c *conn) unregisterBacking(id int32) syscall.Errno {
	_, _, en := unix.Syscall(unix.SYS_IOCTL, uintptr(c.fd), ioctlBackingClose, uintptr(unsafe.Pointer(&id)))
	return en
}

// pendingTable is the unique IDs of the requests read and not yet
// answered, in a file mapped shared, so that what a process that died had
// in hand is still known to the one that takes its connection over. Each
// slot is one atomic word; a request takes a free one and frees it once
// answered. Without a file it is kept in memory only.
type pendingTable struct {
	mem   []byte
	slots []uint64
	next  atomic.Uint32
}

// pendingSlots bounds the requests tracked at once: the kernel keeps at
// most max_background (64) asynchronous requests in flight, plus one
// synchronous one per calling thread.
const pendingSlots = 4096

func openPendingTable(path string) (*pendingTable, error) {
	size := pendingSlots * 8
	t := &pendingTable{}
	if path == "" {
		t.slots = make([]uint64, pendingSlots)
		return t, nil
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := f.Truncate(int64(size)); err != nil {
		return nil, err
	}
	// Its blocks are allocated now: a write to a page of a shared mapping
	// that the filesystem has no room for is a SIGBUS, which would end the
	// daemon (and every restart of it) on a full disk. Allocating keeps
	// what a previous daemon wrote.
	if err := unix.Fallocate(int(f.Fd()), 0, 0, int64(size)); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
		return nil, fmt.Errorf("allocating %s: %w", path, err)
	}
	t.mem, err = unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mapping %s: %w", path, err)
	}
	t.slots = unsafe.Slice((*uint64)(unsafe.Pointer(&t.mem[0])), pendingSlots)
	return t, nil
}

// add notes request unique as read and returns its slot, or -1 when the
// table is full (the request is then not failed after a crash: resend
// still brings it back).
func (t *pendingTable) add(unique uint64) int {
	start := int(t.next.Add(1))
	for i := range pendingSlots {
		s := (start + i) % pendingSlots
		if atomic.CompareAndSwapUint64(&t.slots[s], 0, unique) {
			return s
		}
	}
	return -1
}

func (t *pendingTable) remove(slot int) { atomic.StoreUint64(&t.slots[slot], 0) }

// drain returns the requests noted and empties the table.
func (t *pendingTable) drain() []uint64 {
	var out []uint64
	for i := range t.slots {
		if u := atomic.SwapUint64(&t.slots[i], 0); u != 0 {
			out = append(out, u)
		}
	}
	return out
}

func (t *pendingTable) close() {
	if t.mem != nil {
		unix.Munmap(t.mem)
		t.mem, t.slots = nil, nil
	}
}
