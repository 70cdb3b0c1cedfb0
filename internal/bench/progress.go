package bench

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// progress reports what a phase is doing while it runs: a single line
// rewritten in place on a terminal, a plain line every interval otherwise.
type progress struct {
	w     io.Writer
	every time.Duration
	tty   bool

	mu      sync.Mutex
	label   string        // "round 1 relay x1"
	stage   string        // "preload", "run", "check"
	since   time.Time     // the stage's start
	limit   time.Duration // the stage's expected length, 0 if unknown
	drawn   bool          // a terminal line is on screen
	stop    chan struct{}
	stopped chan struct{}
}

// begin starts reporting the phase named label; end stops it.
func (p *progress) begin(label string) {
	p.mu.Lock()
	p.label, p.stage, p.since, p.limit = label, "start", time.Now(), 0
	p.stop, p.stopped = make(chan struct{}), make(chan struct{})
	p.mu.Unlock()
	every := p.every
	if p.tty {
		every = min(every, time.Second)
	}
	go func() {
		defer close(p.stopped)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				p.report()
			}
		}
	}()
}

// setStage names what the phase does now (and how long it should take, if
// known).
func (p *progress) setStage(stage string, limit time.Duration) {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.stage, p.since, p.limit = stage, time.Now(), limit
	p.mu.Unlock()
}

func (p *progress) report() {
	p.mu.Lock()
	defer p.mu.Unlock()
	el := time.Since(p.since).Truncate(time.Second)
	s := fmt.Sprintf("%s: %s %s", p.label, p.stage, el)
	if p.limit > 0 {
		s += "/" + p.limit.String()
	}
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", s)
		p.drawn = true
		return
	}
	fmt.Fprintln(p.w, s)
}

// end stops the reports and clears a terminal line, so the phase's
// summary line replaces it.
func (p *progress) end() {
	close(p.stop)
	<-p.stopped
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
		p.drawn = false
	}
}
