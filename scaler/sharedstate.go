package scaler

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/flowscaler/flowscaler/scaler/config"
	"github.com/flowscaler/flowscaler/sources"
)

// maxStateAttempts bounds the load-decide-save rounds of one call when
// other replicas keep saving the same object first. Two replicas polled
// round-robin rarely collide at all; three rounds leave room for a third.
const maxStateAttempts = 3

// errUnreadableState marks a stored value this replica cannot decode.
var errUnreadableState = errors.New("stored state unreadable")

// evaluateShared is the second half of evaluate with a state store, st.mu
// held. The object's memory is loaded, the pure policy decides on it and
// the result is saved with compare-and-set on the sequence number:
//
//	load (seq n) → decide → save if still n → done
//	                       ↘ conflict: another replica saved n+1 first;
//	                         load again and decide on top of its state
//
// so two replicas deciding at once converge on one state, each decision
// built on the one before. A reading no newer than the stored last
// decision's is not decided again (it or a later one was already counted,
// perhaps by another replica): that decision is served as is.
//
// The store failing never fails the call: the replica decides from its
// own memory, says so in the reason, counts it, and logs the change once.
func (s *Server) evaluateShared(ctx context.Context, span trace.Span, tr trace.Tracer, st *objectState, obj Object,
	reading sources.Reading, readErr error, m sources.Metrics, metricsErr error, now time.Time, srv config.Server) (Evaluation, error) {
	staleAfter := time.Duration(srv.StaleAfter)
	// One budget for every state operation of the call, within readTimeout.
	sctx, cancel := context.WithTimeout(ctx, time.Duration(srv.ReadTimeout))
	defer cancel()

	if readErr != nil {
		// Another replica's newer good answer is the better stale answer,
		// and a restarted replica has none of its own.
		if err := s.loadShared(sctx, st, obj); err != nil {
			op := "load"
			if errors.Is(err, errUnreadableState) {
				op = "decode"
			}
			s.stateFailed(op, err)
		}
		ev, err := s.staleOrFail(ctx, st, readErr, now, staleAfter)
		if err == nil {
			outcome(span, ev)
		}
		return ev, err
	}
	st.failure = ""

	var storeErr error
	var work memory
	for attempt := 1; ; attempt++ {
		if err := s.loadShared(sctx, st, obj); err != nil {
			if !errors.Is(err, errUnreadableState) {
				// Not knowing the stored state, a save could only
				// conflict or overwrite: decide from memory alone.
				s.stateFailed("load", err)
				ev := s.decideOn(ctx, tr, obj, &st.memory, reading, m, metricsErr, now, staleAfter, storeNote(err))
				return s.shared(span, ev, now), nil
			}
			// The save below replaces the unreadable value.
			s.stateFailed("decode", err)
			storeErr = err
		}
		if st.last != nil && !st.last.Stale && !reading.At.After(st.last.Reading.At) {
			if storeErr == nil {
				s.stateOK()
			}
			span.SetAttributes(attrReused.Bool(true))
			outcome(span, *st.last)
			return *st.last, nil
		}
		work = st.memory
		work.consumers = maps.Clone(st.consumers)
		ev := s.decideOn(ctx, tr, obj, &work, reading, m, metricsErr, now, staleAfter, "")
		data, err := encodeMemory(&work)
		if err == nil {
			var seq uint64
			if seq, err = s.store.Save(sctx, obj.ID, st.seq, data); err == nil {
				st.memory, st.seq = work, seq
				if storeErr != nil {
					ev.Decision.Reason += storeNote(storeErr)
					st.last = &ev
				} else {
					s.stateOK()
				}
				return s.shared(span, ev, now), nil
			}
		}
		if errors.Is(err, ErrStateConflict) {
			s.metrics.state.conflicts.Inc()
			if attempt < maxStateAttempts {
				continue
			}
			err = fmt.Errorf("%w %d times in a row", err, attempt)
		}
		s.stateFailed("save", err)
		storeErr = err
		break
	}
	// Unsaved, the decision still stands here; a later save or another
	// replica's newer state supersedes it (see loadShared).
	work.last.Decision.Reason += storeNote(storeErr)
	st.memory = work
	return s.shared(span, *st.last, now), nil
}

// shared finishes a fresh decision as evaluate does.
func (s *Server) shared(span trace.Span, ev Evaluation, now time.Time) Evaluation {
	s.metrics.observeDecision(ev)
	outcome(span, ev)
	s.sweep(now)
	return ev
}

func storeNote(err error) string {
	return fmt.Sprintf("; state store failing (%v): decided from this replica's memory", err)
}

// loadShared brings st up to the stored state. The stored memory replaces
// st's unless st's last decision is on a newer reading: decisions this
// replica made while the store was out of reach then win, and are saved
// over the older stored state.
func (s *Server) loadShared(ctx context.Context, st *objectState, obj Object) error {
	seq, data, err := s.store.Load(ctx, obj.ID)
	switch {
	case err != nil:
		return err
	case seq == st.seq:
		return nil
	case seq == 0:
		// Expired or flushed: the next save creates it again.
		st.seq = 0
		return nil
	}
	mem, err := decodeMemory(data, obj)
	st.seq = seq
	if err != nil {
		return fmt.Errorf("%w: %s at seq %d: %v", errUnreadableState, obj.ID, seq, err)
	}
	if st.last == nil || (mem.last != nil && !mem.last.Reading.At.Before(st.last.Reading.At)) {
		st.memory = mem
	}
	return nil
}

func (s *Server) stateOK() {
	if s.storeFailing.CompareAndSwap(true, false) {
		s.log.Info("state store recovered: replicas share policy state again")
	}
}

func (s *Server) stateFailed(op string, err error) {
	s.metrics.state.errors.WithLabelValues(op).Inc()
	if s.storeFailing.CompareAndSwap(false, true) {
		s.log.Warn("state store failing: deciding from this replica's memory until it recovers", "operation", op, "error", err.Error())
	}
}

// stateMetrics count the state store's failures and write conflicts.
type stateMetrics struct {
	errors    *prometheus.CounterVec
	conflicts prometheus.Counter
}

func newStateMetrics() stateMetrics {
	return stateMetrics{
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowscaler_state_store_errors_total",
			Help: "State store operations that failed (load, save, decode); each call then decided from the replica's own memory.",
		}, []string{"operation"}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowscaler_state_store_conflicts_total",
			Help: "Saves refused because another replica saved the same object first; the decision was made again on its state.",
		}),
	}
}
