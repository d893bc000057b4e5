// spdy-record: records real SPDY/3.1 exchanges between the Kubernetes Go client (client-go's
// remotecommand and portforward, as kubectl and the API server use them) and the Go streaming
// server the kubelet's container runtimes use (k8s.io/cri-streaming). A recording proxy sits
// between the two and writes every byte each side sent, so vks's SPDY server can be tested
// against what the real Go code puts on the wire (tests/testdata/spdy/, checked by
// src/kubelet_api/stream/spdy tests).
//
// Test infrastructure only; nothing here ships in vks. Run through k3s/spdy-record/record.
package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	cripf "k8s.io/cri-streaming/pkg/streaming/portforward"
	crirc "k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

// recorder is a TCP proxy that keeps what each side sent.
type recorder struct {
	mu       sync.Mutex
	toServer bytes.Buffer
	toClient bytes.Buffer
	done     sync.WaitGroup
}

func (r *recorder) proxy(l net.Listener, target string) {
	c, err := l.Accept()
	if err != nil {
		return
	}
	s, err := net.Dial("tcp", target)
	if err != nil {
		c.Close()
		return
	}
	copyRec := func(dst, src net.Conn, buf *bytes.Buffer) {
		defer r.done.Done()
		b := make([]byte, 32*1024)
		for {
			n, err := src.Read(b)
			if n > 0 {
				r.mu.Lock()
				buf.Write(b[:n])
				r.mu.Unlock()
				if _, werr := dst.Write(b[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}
	r.done.Add(2)
	go copyRec(s, c, &r.toServer)
	go copyRec(c, s, &r.toClient)
}

// echoExecutor plays a container: copies stdin to stdout, writes to stderr, exits with code.
type echoExecutor struct{ code int }

func (e echoExecutor) ExecInContainer(ctx context.Context, name, uid, container string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan crirc.TerminalSize, timeout time.Duration) error {
	if resize != nil {
		select {
		case sz := <-resize:
			fmt.Fprintf(out, "size %dx%d\n", sz.Width, sz.Height)
		case <-time.After(5 * time.Second):
		}
	}
	if in != nil {
		io.Copy(out, in)
	}
	if errw != nil {
		fmt.Fprintf(errw, "to stderr\n")
	}
	if e.code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("exit %d", e.code), Code: e.code}
	}
	return nil
}

// pongForwarder plays a pod's port: reads a line, answers "pong <line>".
type pongForwarder struct{}

func (pongForwarder) PortForward(ctx context.Context, name, uid string, port int32, stream io.ReadWriteCloser) error {
	b := make([]byte, 64)
	n, _ := stream.Read(b)
	fmt.Fprintf(stream, "pong %d %s", port, b[:n])
	return nil
}

type fixedSize struct{ sent bool }

func (f *fixedSize) Next() *remotecommand.TerminalSize {
	if f.sent {
		select {} // no further resizes
	}
	f.sent = true
	return &remotecommand.TerminalSize{Width: 80, Height: 24}
}

func serve(h http.Handler) (string, func()) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	return l.Addr().String(), func() { srv.Close() }
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "spdy-record:", err)
		os.Exit(1)
	}
}

func write(dir, name string, r *recorder) {
	r.done.Wait()
	check(os.WriteFile(filepath.Join(dir, name+".c2s"), r.toServer.Bytes(), 0o644))
	check(os.WriteFile(filepath.Join(dir, name+".s2c"), r.toClient.Bytes(), 0o644))
	fmt.Printf("%s: client sent %d bytes, server sent %d bytes\n", name, r.toServer.Len(), r.toClient.Len())
}

// recordExec runs one exec through the recording proxy.
func recordExec(dir, name string, tty bool, code int) {
	server, stop := serve(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		opts, err := crirc.NewOptions(req)
		check(err)
		crirc.ServeExec(w, req, echoExecutor{code: code}, "pod", "uid", "c", req.URL.Query()["command"], opts,
			time.Minute, 10*time.Second, crirc.SupportedStreamingProtocols)
	}))
	defer stop()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	rec := &recorder{}
	go rec.proxy(l, server)
	q := url.Values{"command": {"cat"}, "input": {"1"}, "output": {"1"}}
	if tty {
		q.Set("tty", "1")
	} else {
		q.Set("error", "1")
	}
	u, _ := url.Parse("http://" + l.Addr().String() + "/exec/ns/pod/c?" + q.Encode())
	ex, err := remotecommand.NewSPDYExecutor(&rest.Config{Host: "http://" + l.Addr().String()}, "POST", u)
	check(err)
	var stdout, stderr bytes.Buffer
	opts := remotecommand.StreamOptions{Stdin: strings.NewReader("hello\n"), Stdout: &stdout, Tty: tty}
	if tty {
		opts.TerminalSizeQueue = &fixedSize{}
	} else {
		opts.Stderr = &stderr
	}
	err = ex.StreamWithContext(context.Background(), opts)
	fmt.Printf("%s: stdout %q stderr %q result %v\n", name, stdout.String(), stderr.String(), err)
	write(dir, name, rec)
}

func recordPortForward(dir, name string) {
	server, stop := serve(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		cripf.ServePortForward(w, req, pongForwarder{}, "pod", "uid", &cripf.V4Options{}, time.Minute, 10*time.Second, cripf.SupportedProtocols)
	}))
	defer stop()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	rec := &recorder{}
	go rec.proxy(l, server)
	u, _ := url.Parse("http://" + l.Addr().String() + "/portForward/ns/pod")
	transport, upgrader, err := spdy.RoundTripperFor(&rest.Config{Host: "http://" + l.Addr().String()})
	check(err)
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, "POST", u)
	stopCh, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{"0:8080"}, stopCh, ready, io.Discard, os.Stderr)
	check(err)
	go func() { check(fw.ForwardPorts()) }()
	<-ready
	ports, err := fw.GetPorts()
	check(err)
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", ports[0].Local))
	check(err)
	fmt.Fprint(c, "ping")
	reply, _ := io.ReadAll(c)
	c.Close()
	fmt.Printf("%s: reply %q\n", name, reply)
	time.Sleep(200 * time.Millisecond) // let the stream resets reach the wire
	close(stopCh)
	write(dir, name, rec)
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: spdy-record OUTDIR")
		os.Exit(2)
	}
	dir := os.Args[1]
	check(os.MkdirAll(dir, 0o755))
	recordExec(dir, "exec-v4-pipes-exit3", false, 3)
	recordExec(dir, "exec-v4-tty", true, 0)
	recordPortForward(dir, "portforward")
}
