//! Self-contained HTML reports: inline CSS, images as base64 PNG data URIs, line plots as inline
//! SVG (drawn with `plotters`), tables from rows, a collapsible config block. Nothing is loaded
//! from outside the file (no scripts, style sheets, fonts or image links), so a report can be
//! mailed or archived as one file. Every number shown should also go to a JSON twin; the
//! callers write one next to the HTML.
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

/// A table: header cells and rows of already formatted cells.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub caption: Option<String>,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Self {
            caption: None,
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }
    pub fn with_caption(mut self, caption: impl Into<String>) -> Self {
        self.caption = Some(caption.into());
        self
    }
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// GitHub-flavoured markdown (pipes in cells escaped).
    pub fn markdown(&self) -> String {
        let cell = |s: &String| s.replace('|', "\\|").replace('\n', " ");
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| {} |",
            self.headers
                .iter()
                .map(cell)
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(
            s,
            "|{}|",
            self.headers
                .iter()
                .map(|_| " --- ")
                .collect::<Vec<_>>()
                .join("|")
        );
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} |",
                r.iter().map(cell).collect::<Vec<_>>().join(" | ")
            );
        }
        s
    }
}

/// A PNG image with a caption.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub caption: String,
    pub png: Vec<u8>,
}

/// One line of a plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Draw a marker at every point (sparse series such as evaluation points).
    pub markers: bool,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
            markers: false,
        }
    }
    pub fn with_markers(mut self) -> Self {
        self.markers = true;
        self
    }
}

/// A part of a report, rendered in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// `<h2>` (level 2) or `<h3>` (level 3).
    Heading(u8, String),
    /// A paragraph of plain text (escaped).
    Paragraph(String),
    /// A bulleted list of plain-text items.
    List(Vec<String>),
    Table(Table),
    /// Images side by side.
    Figures(Vec<Figure>),
    /// Inline SVG plots side by side (from [`line_plot`]).
    Plots(Vec<String>),
    /// A collapsible preformatted block (`<details>`), e.g. the config as TOML.
    Details {
        summary: String,
        body: String,
    },
}

/// An HTML report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub title: String,
    pub subtitle: Option<String>,
    pub blocks: Vec<Block>,
}

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;\
max-width:1200px;margin:1.5em auto;padding:0 1em;color:#1b1b1b;line-height:1.45}\
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}\
.sub{color:#555;margin-top:0}table{border-collapse:collapse;margin:.8em 0}\
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f3f3f3}\
td:first-child,th:first-child{text-align:left}caption{caption-side:top;text-align:left;color:#444;padding-bottom:.3em}\
.row{display:flex;flex-wrap:wrap;gap:1.2em;align-items:flex-start}figure{margin:0}\
figure img{image-rendering:pixelated;border:1px solid #ccc}figcaption{color:#444;font-size:.9em;max-width:420px}\
details{margin:.8em 0}summary{cursor:pointer;font-weight:600}\
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}code{background:#f3f3f3;padding:0 .2em}";

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Standard base64 with padding (RFC 4648).
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut o = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for ch in bytes.chunks(3) {
        let b = [ch[0], *ch.get(1).unwrap_or(&0), *ch.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        o.push(A[(n >> 18) as usize & 63] as char);
        o.push(A[(n >> 12) as usize & 63] as char);
        o.push(if ch.len() > 1 {
            A[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        o.push(if ch.len() > 2 {
            A[n as usize & 63] as char
        } else {
            '='
        });
    }
    o
}

/// Width and height of a PNG from its header, if `bytes` is one.
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(bytes[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(bytes[20..24].try_into().ok()?);
    Some((w, h))
}

impl Report {
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            subtitle: None,
            blocks: Vec::new(),
        }
    }
    pub fn push(&mut self, b: Block) {
        self.blocks.push(b);
    }
    pub fn heading(&mut self, text: impl Into<String>) {
        self.blocks.push(Block::Heading(2, text.into()));
    }
    pub fn paragraph(&mut self, text: impl Into<String>) {
        self.blocks.push(Block::Paragraph(text.into()));
    }

    /// The whole document.
    pub fn render(&self) -> String {
        let mut h = String::new();
        h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
        h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
        let _ = writeln!(h, "<title>{}</title>", escape(&self.title));
        let _ = writeln!(h, "<style>{CSS}</style>\n</head>\n<body>");
        let _ = writeln!(h, "<h1>{}</h1>", escape(&self.title));
        if let Some(s) = &self.subtitle {
            let _ = writeln!(h, "<p class=\"sub\">{}</p>", escape(s));
        }
        for b in &self.blocks {
            render_block(&mut h, b);
        }
        h.push_str("</body>\n</html>\n");
        h
    }

    /// Writes the document atomically (temporary file + rename).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        divrl_reward::io::write_atomic(path, self.render().as_bytes())
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

fn render_block(h: &mut String, b: &Block) {
    match b {
        Block::Heading(level, t) => {
            let l = (*level).clamp(2, 4);
            let _ = writeln!(h, "<h{l}>{}</h{l}>", escape(t));
        }
        Block::Paragraph(t) => {
            let _ = writeln!(h, "<p>{}</p>", escape(t));
        }
        Block::List(items) => {
            h.push_str("<ul>\n");
            for i in items {
                let _ = writeln!(h, "<li>{}</li>", escape(i));
            }
            h.push_str("</ul>\n");
        }
        Block::Table(t) => {
            h.push_str("<table>\n");
            if let Some(c) = &t.caption {
                let _ = writeln!(h, "<caption>{}</caption>", escape(c));
            }
            h.push_str("<thead><tr>");
            for c in &t.headers {
                let _ = write!(h, "<th>{}</th>", escape(c));
            }
            h.push_str("</tr></thead>\n<tbody>\n");
            for r in &t.rows {
                h.push_str("<tr>");
                for c in r {
                    let _ = write!(h, "<td>{}</td>", escape(c));
                }
                h.push_str("</tr>\n");
            }
            h.push_str("</tbody>\n</table>\n");
        }
        Block::Figures(figs) => {
            h.push_str("<div class=\"row\">\n");
            for f in figs {
                // Small grids are shown at 2× (pixelated) so 28×28 images stay readable.
                let size = match png_size(&f.png) {
                    Some((w, ht)) if w < 400 => {
                        format!(" width=\"{}\" height=\"{}\"", w * 2, ht * 2)
                    }
                    Some((w, ht)) => format!(" width=\"{w}\" height=\"{ht}\""),
                    None => String::new(),
                };
                let _ = writeln!(
                    h,
                    "<figure><img alt=\"{}\"{size} src=\"data:image/png;base64,{}\"><figcaption>{}</figcaption></figure>",
                    escape(&f.caption),
                    base64(&f.png),
                    escape(&f.caption)
                );
            }
            h.push_str("</div>\n");
        }
        Block::Plots(svgs) => {
            h.push_str("<div class=\"row\">\n");
            for s in svgs {
                let _ = writeln!(h, "<div>{s}</div>");
            }
            h.push_str("</div>\n");
        }
        Block::Details { summary, body } => {
            let _ = writeln!(
                h,
                "<details><summary>{}</summary>\n<pre>{}</pre>\n</details>",
                escape(summary),
                escape(body)
            );
        }
    }
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
];

fn padded_range(lo: f64, hi: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span <= 1e-12 * (lo.abs() + hi.abs()).max(1e-300) {
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.05 };
        return (lo - d, hi + d);
    }
    (lo - 0.05 * span, hi + 0.05 * span)
}

/// A line plot as an SVG string (420×280). Non-finite points are dropped. With no finite point
/// at all, the plot says so instead of drawing axes.
pub fn line_plot(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<String, String> {
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (420, 280)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| format!("{e:?}"))?;
        if pts.is_empty() {
            root.draw(&Text::new(
                format!("{title}: no data"),
                (20, 130),
                ("sans-serif", 15).into_font(),
            ))
            .map_err(|e| format!("{e:?}"))?;
        } else {
            let fold = |f: fn(f64, f64) -> f64, init: f64, sel: fn(&(f64, f64)) -> f64| {
                pts.iter().map(sel).fold(init, f)
            };
            let (x0, x1) = padded_range(
                fold(f64::min, f64::INFINITY, |p| p.0),
                fold(f64::max, f64::NEG_INFINITY, |p| p.0),
            );
            let (y0, y1) = padded_range(
                fold(f64::min, f64::INFINITY, |p| p.1),
                fold(f64::max, f64::NEG_INFINITY, |p| p.1),
            );
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 15))
                .margin(8)
                .x_label_area_size(34)
                .y_label_area_size(62)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(|e| format!("{e:?}"))?;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .x_labels(6)
                .y_labels(6)
                .y_label_formatter(&|v| format_tick(*v))
                .x_label_formatter(&|v| format_tick(*v))
                .draw()
                .map_err(|e| format!("{e:?}"))?;
            for (i, s) in series.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                let p: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .copied()
                    .filter(|(x, y)| x.is_finite() && y.is_finite())
                    .collect();
                chart
                    .draw_series(LineSeries::new(p.clone(), color.stroke_width(2)))
                    .map_err(|e| format!("{e:?}"))?
                    .label(s.name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                if s.markers || p.len() == 1 {
                    chart
                        .draw_series(p.iter().map(|&c| Circle::new(c, 3, color.filled())))
                        .map_err(|e| format!("{e:?}"))?;
                }
            }
            if series.len() > 1 {
                chart
                    .configure_series_labels()
                    .border_style(BLACK.mix(0.4))
                    .background_style(WHITE.mix(0.85))
                    .position(SeriesLabelPosition::MiddleRight)
                    .draw()
                    .map_err(|e| format!("{e:?}"))?;
            }
        }
        root.present().map_err(|e| format!("{e:?}"))?;
    }
    Ok(svg)
}

/// Compact tick labels: 3 significant digits, scientific for very small or large magnitudes.
pub fn format_tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Checks that every non-void HTML element opened in `html` is closed in order (outside
/// `<pre>`/text content), the structural check the report tests use. Returns the first problem.
pub fn check_balanced(html: &str) -> Result<(), String> {
    const VOID: [&str; 8] = [
        "meta", "img", "br", "hr", "input", "link", "!doctype", "col",
    ];
    let mut stack: Vec<String> = Vec::new();
    let b = html.as_bytes();
    let mut i = 0;
    while let Some(off) = html[i..].find('<') {
        let start = i + off;
        let end = html[start..]
            .find('>')
            .map(|e| start + e)
            .ok_or_else(|| format!("unterminated tag at byte {start}"))?;
        let inner = &html[start + 1..end];
        i = end + 1;
        if inner.starts_with("!--") || inner.starts_with('?') {
            continue;
        }
        let self_closing = inner.ends_with('/');
        let closing = inner.starts_with('/');
        let name: String = inner
            .trim_start_matches('/')
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '/' && *c != '>')
            .collect::<String>()
            .to_ascii_lowercase();
        if name.is_empty() {
            return Err(format!("empty tag at byte {start}"));
        }
        if closing {
            match stack.pop() {
                Some(open) if open == name => {}
                Some(open) => return Err(format!("</{name}> closes <{open}> at byte {start}")),
                None => return Err(format!("</{name}> without an open element at byte {start}")),
            }
        } else if !self_closing && !VOID.contains(&name.as_str()) {
            stack.push(name);
        }
        let _ = b;
    }
    match stack.pop() {
        None => Ok(()),
        Some(open) => Err(format!("<{open}> is never closed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn report_is_self_contained_and_balanced() {
        let mut r = Report::new("T <&>");
        r.subtitle = Some("sub".into());
        r.heading("Tables");
        let mut t = Table::new(["a", "b|c"]).with_caption("cap");
        t.row(["1", "<2>"]);
        r.push(Block::Table(t.clone()));
        // A 1×1 grey PNG.
        let png: Vec<u8> = vec![
            0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 0x0D, 0x49, 0x48, 0x44, 0x52,
            0, 0, 0, 1, 0, 0, 0, 1, 8, 0, 0, 0, 0, 0x3A, 0x7E, 0x9B, 0x55, 0, 0, 0, 0x0A, 0x49,
            0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x68, 0, 0, 0, 0x82, 0, 0x81, 0x77, 0xCD, 0x72,
            0xB6, 0, 0, 0, 0, 0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
        ];
        assert_eq!(png_size(&png), Some((1, 1)));
        r.push(Block::Figures(vec![Figure {
            caption: "grid".into(),
            png,
        }]));
        let plot = line_plot(
            "reward",
            "epoch",
            "set reward",
            &[
                Series::new("mmd", vec![(1.0, -3.0), (2.0, -2.5), (3.0, f64::NAN)]),
                Series::new("flat", vec![(1.0, 1.0), (2.0, 1.0)]).with_markers(),
            ],
        )
        .unwrap();
        assert!(plot.starts_with("<svg"), "{}", &plot[..60.min(plot.len())]);
        let empty = line_plot("nothing", "x", "y", &[Series::new("s", vec![])]).unwrap();
        assert!(empty.contains("no data"));
        r.push(Block::Plots(vec![plot, empty]));
        r.push(Block::Details {
            summary: "config".into(),
            body: "a = \"<b>\"\n".into(),
        });
        r.push(Block::List(vec!["x".into()]));
        let html = r.render();
        check_balanced(&html).unwrap();
        assert!(html.contains("<title>T &lt;&amp;&gt;</title>"));
        assert!(html.contains("&lt;2&gt;"));
        assert!(html.contains("src=\"data:image/png;base64,iVBORw0KGgo"));
        assert!(html.contains("width=\"2\" height=\"2\""));
        for external in [
            "src=\"http",
            "href=\"http",
            "<script",
            "<link",
            "@import",
            "url(",
        ] {
            assert!(!html.contains(external), "{external}");
        }
        assert!(t.markdown().contains("| a | b\\|c |"));
        assert_eq!(t.markdown().lines().count(), 3);
        // The balance check catches a missing closing tag.
        assert!(check_balanced("<div><p>x</div>").is_err());
        assert!(check_balanced("<div>").is_err());
    }

    #[test]
    fn ticks_are_compact() {
        assert_eq!(format_tick(0.0), "0");
        assert_eq!(format_tick(12.345), "12.35");
        assert_eq!(format_tick(0.1234), "0.123");
        assert_eq!(format_tick(1.5e-6), "1.5e-6");
        assert_eq!(format_tick(250.4), "250");
    }
}
