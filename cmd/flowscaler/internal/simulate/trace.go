package simulate

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/flowscaler/flowscaler/policy/sim"
)

// loadTrace reads --trace: builtin:NAME or a CSV file.
func loadTrace(spec string, defaultW time.Duration) (sim.Trace, error) {
	if name, ok := strings.CutPrefix(spec, "builtin:"); ok {
		return sim.Builtin(name)
	}
	f, err := os.Open(spec)
	if err != nil {
		return sim.Trace{}, fmt.Errorf("--trace = %q: %w", spec, err)
	}
	defer f.Close()
	return parseCSV(f, spec, defaultW)
}

// maxTraceSeconds bounds a CSV trace: a week at one point per second.
const maxTraceSeconds = 7 * 24 * 3600

// parseCSV reads `seconds,arrivals_per_second[,processing_ms][,failure_rate]`
// rows, an optional header first. Each row holds from its second until the
// next row's; the trace ends after the last row's second. Columns missing
// from a row take defaultW and no failures. Every error names the line.
func parseCSV(r io.Reader, name string, defaultW time.Duration) (sim.Trace, error) {
	var rows []parsedRow
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Split(text, ",")
		for i := range fields {
			fields[i] = strings.TrimSpace(fields[i])
		}
		if len(rows) == 0 && fields[0] == "seconds" {
			if err := checkHeader(fields); err != nil {
				return sim.Trace{}, fmt.Errorf("%s line %d: %w", name, line, err)
			}
			continue
		}
		rw, err := parseRow(fields, defaultW)
		if err != nil {
			return sim.Trace{}, fmt.Errorf("%s line %d: %w", name, line, err)
		}
		if len(rows) > 0 && rw.at <= rows[len(rows)-1].at {
			return sim.Trace{}, fmt.Errorf("%s line %d: seconds = %q: must be greater than the previous row's %d", name, line, fields[0], rows[len(rows)-1].at)
		}
		rows = append(rows, rw)
	}
	if err := sc.Err(); err != nil {
		return sim.Trace{}, fmt.Errorf("%s line %d: %w", name, line+1, err)
	}
	if len(rows) == 0 {
		return sim.Trace{}, fmt.Errorf("%s: no rows: want seconds,arrivals_per_second[,processing_ms][,failure_rate]", name)
	}
	n := rows[len(rows)-1].at + 1
	t := sim.Trace{Name: name, Description: "CSV trace " + name, PoisonAt: -1, MaxReplicas: 100, Points: make([]sim.Point, n)}
	for i, rw := range rows {
		end := n
		if i+1 < len(rows) {
			end = rows[i+1].at
		}
		for s := rw.at; s < end; s++ {
			t.Points[s] = rw.p
		}
	}
	for s := 0; s < rows[0].at; s++ {
		t.Points[s] = sim.Point{ProcessingTime: rows[0].p.ProcessingTime}
	}
	return t, nil
}

var csvColumns = []string{"seconds", "arrivals_per_second", "processing_ms", "failure_rate"}

func checkHeader(fields []string) error {
	if len(fields) < 2 || len(fields) > 4 {
		return fmt.Errorf("header %q: want seconds,arrivals_per_second[,processing_ms][,failure_rate]", strings.Join(fields, ","))
	}
	for i, f := range fields {
		if f != csvColumns[i] {
			return fmt.Errorf("header column %d = %q: must be %s", i+1, f, csvColumns[i])
		}
	}
	return nil
}

type parsedRow struct {
	at int
	p  sim.Point
}

func parseRow(fields []string, defaultW time.Duration) (parsedRow, error) {
	if len(fields) < 2 || len(fields) > 4 {
		return parsedRow{}, fmt.Errorf("%d columns: want seconds,arrivals_per_second[,processing_ms][,failure_rate]", len(fields))
	}
	at, err := strconv.Atoi(fields[0])
	if err != nil || at < 0 || at >= maxTraceSeconds {
		return parsedRow{}, fmt.Errorf("seconds = %q: must be a whole number between 0 and %d", fields[0], maxTraceSeconds-1)
	}
	num := func(col int, rule func(float64) bool, ruleText string) (float64, error) {
		v, err := strconv.ParseFloat(fields[col], 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) || !rule(v) {
			return 0, fmt.Errorf("%s = %q: must be %s", csvColumns[col], fields[col], ruleText)
		}
		return v, nil
	}
	p := sim.Point{ProcessingTime: defaultW}
	if p.Rate, err = num(1, func(v float64) bool { return v >= 0 && v <= 1e7 }, "a number between 0 and 10000000"); err != nil {
		return parsedRow{}, err
	}
	if len(fields) > 2 && fields[2] != "" {
		ms, err := num(2, func(v float64) bool { return v >= 0.001 && v <= 3.6e6 }, "a number of milliseconds between 0.001 and 3600000")
		if err != nil {
			return parsedRow{}, err
		}
		p.ProcessingTime = time.Duration(ms * float64(time.Millisecond))
	}
	if len(fields) > 3 && fields[3] != "" {
		if p.FailureRate, err = num(3, func(v float64) bool { return v >= 0 && v <= 1 }, "a fraction between 0 and 1"); err != nil {
			return parsedRow{}, err
		}
	}
	return parsedRow{at: at, p: p}, nil
}
