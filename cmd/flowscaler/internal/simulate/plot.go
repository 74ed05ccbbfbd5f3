package simulate

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"

	"github.com/flowscaler/flowscaler/policy/sim"
)

// palette: flowscaler first and bold, the baselines after.
var palette = []color.Color{
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, // blue
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, // red
	color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}, // orange
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}, // green
	color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff}, // purple
}

// plotFile draws four panels sharing the time axis (hours): arrivals,
// visible backlog, oldest message age with the objective, and replicas,
// one line per policy.
func plotFile(path string, c sim.Comparison) error {
	hours := func(s sim.Series, ys []float64) plotter.XYs {
		xy := make(plotter.XYs, 0, len(ys))
		for i, y := range ys {
			if !math.IsNaN(y) {
				xy = append(xy, plotter.XY{X: s.Seconds[i] / 3600, Y: y})
			}
		}
		return xy
	}
	panel := func(title, unit string) *plot.Plot {
		p := plot.New()
		p.Title.Text = title
		p.Y.Label.Text = unit
		p.X.Label.Text = "hours"
		p.Add(plotter.NewGrid())
		p.Legend.Top = true
		p.Y.Min = 0
		p.Y.Tick.Marker = plainTicks{}
		return p
	}
	arrivals := panel(fmt.Sprintf("%s: arrivals", c.Trace.Name), "messages/s")
	backlog := panel("visible backlog", "messages")
	age := panel(fmt.Sprintf("oldest message age (objective %v)", c.Scenario.TargetAge), "seconds")
	replicas := panel("replicas", "pods")

	first := c.Results[0].Series
	l, err := plotter.NewLine(hours(first, first.Arrivals))
	if err != nil {
		return err
	}
	l.Color = color.Gray{Y: 0x40}
	arrivals.Add(l)
	obj, err := plotter.NewLine(plotter.XYs{{X: 0, Y: c.Scenario.TargetAge.Seconds()}, {X: c.Trace.Duration().Hours(), Y: c.Scenario.TargetAge.Seconds()}})
	if err != nil {
		return err
	}
	obj.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	obj.Color = color.Black
	age.Add(obj)
	age.Legend.Add("objective", obj)

	// The legend lists flowscaler first; the baselines are drawn first so
	// that flowscaler's line stays on top.
	panels := []*plot.Plot{backlog, age, replicas}
	lines := make([][]*plotter.Line, len(panels))
	for i, r := range c.Results {
		for j, ys := range [][]float64{r.Series.Backlog, r.Series.OldestAge, r.Series.Replicas} {
			line, err := plotter.NewLine(hours(r.Series, ys))
			if err != nil {
				return err
			}
			line.Color = palette[i%len(palette)]
			line.Width = vg.Points(1)
			if i == 0 {
				line.Width = vg.Points(2)
			}
			lines[j] = append(lines[j], line)
			panels[j].Legend.Add(r.Policy, line)
		}
	}
	for j, p := range panels {
		for i := len(lines[j]) - 1; i >= 0; i-- {
			p.Add(lines[j][i])
		}
	}
	for _, p := range append(panels, arrivals) {
		p.X.Min, p.X.Max = 0, c.Trace.Duration().Hours()
		p.X.Tick.Marker = hourTicks{}
	}
	plots := [][]*plot.Plot{{arrivals}, {backlog}, {age}, {replicas}}
	const w, h = 11 * vg.Inch, 13 * vg.Inch
	var canvas vg.CanvasWriterTo
	switch strings.ToLower(filepath.Ext(path)) {
	case ".png":
		canvas = vgimg.PngCanvas{Canvas: vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(96))}
	default:
		canvas = vgsvg.New(w, h)
	}
	dc := draw.New(canvas)
	tiles := draw.Tiles{Rows: 4, Cols: 1, PadX: vg.Millimeter, PadY: 3 * vg.Millimeter, PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter, PadLeft: 2 * vg.Millimeter, PadRight: 4 * vg.Millimeter}
	canvases := plot.Align(plots, tiles, dc)
	for i := range plots {
		plots[i][0].Draw(canvases[i][0])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := canvas.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// hourTicks marks whole hours, or quarter hours on short traces, with at
// most about a dozen labels.
type hourTicks struct{}

func (hourTicks) Ticks(lo, hi float64) []plot.Tick {
	step := 0.25
	for _, s := range []float64{0.25, 0.5, 1, 2, 3, 4, 6, 12, 24} {
		step = s
		if (hi-lo)/s <= 12 {
			break
		}
	}
	var ticks []plot.Tick
	for x := math.Ceil(lo/step) * step; x <= hi+1e-9; x += step {
		ticks = append(ticks, plot.Tick{Value: x, Label: strconv.FormatFloat(x, 'f', -1, 64)})
	}
	return ticks
}

// plainTicks are gonum's default ticks labelled without trailing zeros.
type plainTicks struct{}

func (plainTicks) Ticks(lo, hi float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ticks {
		if ticks[i].Label != "" {
			ticks[i].Label = strconv.FormatFloat(ticks[i].Value, 'f', -1, 64)
		}
	}
	return ticks
}
