package bench

import (
	"fmt"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// plotFile is a written plot.
type plotFile struct {
	title string
	path  string
}

// writePlots writes the PNG plots of r into dir: the lag over time under
// each load, and export time by tenant size (exportd beside the production
// queries).
func writePlots(r *Results, dir string) ([]plotFile, error) {
	var out []plotFile
	if len(r.Freshness) > 0 {
		path := filepath.Join(dir, "lag-"+r.Scale.Name+".png")
		if err := lagPlot(r, path); err != nil {
			return nil, fmt.Errorf("lag plot: %w", err)
		}
		out = append(out, plotFile{"Lag from commit in production to applied in staging, under a sustained load", path})
	}
	if len(r.Exports) > 0 {
		path := filepath.Join(dir, "export-"+r.Scale.Name+".png")
		if err := exportPlot(r, path); err != nil {
			return nil, fmt.Errorf("export plot: %w", err)
		}
		out = append(out, plotFile{"Export time by tenant size: exportd beside the production queries", path})
	}
	return out, nil
}

func lagPlot(r *Results, path string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Replication lag under sustained inserts (scale %s)", r.Scale.Name)
	p.X.Label.Text = "seconds since the load started"
	p.Y.Label.Text = "lag (s): commit in production → applied in staging"
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	for i, x := range r.Freshness {
		pts := make(plotter.XYs, len(x.Series))
		for j, s := range x.Series {
			pts[j] = plotter.XY{X: s.T, Y: s.Lag}
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return err
		}
		l.Color = plotutil.Color(i)
		l.Width = vg.Points(1.2)
		p.Add(l)
		ge := ""
		if x.Unapplied > 0 {
			ge = "≥"
		}
		p.Legend.Add(fmt.Sprintf("%s changes/s: p50 %s%s s, p99 %s%s s, max %s%s s", fmtInt(int64(x.Rate)),
			ge, fmtNum(x.P50), ge, fmtNum(x.P99), ge, fmtNum(x.Max)), l)
	}
	p.Y.Min = 0
	p.Y.Max *= 1.25 // room for the legend
	return p.Save(9*vg.Inch, 4.5*vg.Inch, path)
}

func exportPlot(r *Results, path string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Export time by tenant size (scale %s)", r.Scale.Name)
	p.X.Label.Text = "tenant rows exported (log)"
	p.Y.Label.Text = "seconds (log)"
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
	p.Legend.Top, p.Legend.Left = true, true
	p.Add(plotter.NewGrid())
	series := []struct {
		name string
		y    func(ExportResult) float64
	}{
		{"exportd export (from staging)", func(x ExportResult) float64 { return x.ExportdSeconds }},
		{"10 production COPY queries + zip", func(x ExportResult) float64 { return x.ProdSeconds }},
	}
	for i, s := range series {
		pts := make(plotter.XYs, 0, len(r.Exports))
		for _, x := range r.Exports {
			pts = append(pts, plotter.XY{X: float64(max(x.Rows, 1)), Y: max(s.y(x), 1e-3)})
		}
		l, sc, err := plotter.NewLinePoints(pts)
		if err != nil {
			return err
		}
		l.Color, sc.Color = plotutil.Color(i), plotutil.Color(i)
		sc.Shape = plotutil.Shape(i)
		l.Width = vg.Points(1.5)
		p.Add(l, sc)
		p.Legend.Add(s.name, l, sc)
	}
	labels := make([]string, len(r.Exports))
	pts := make(plotter.XYs, len(r.Exports))
	for i, x := range r.Exports {
		labels[i] = fmt.Sprintf("%s (%.1f×)", x.Label, x.Speedup())
		pts[i] = plotter.XY{X: float64(max(x.Rows, 1)), Y: max(x.ExportdSeconds, 1e-3)}
	}
	ls, err := plotter.NewLabels(plotter.XYLabels{XYs: pts, Labels: labels})
	if err != nil {
		return err
	}
	ls.Offset = vg.Point{X: vg.Points(4), Y: vg.Points(-12)}
	p.Add(ls)
	return p.Save(8*vg.Inch, 5*vg.Inch, path)
}
