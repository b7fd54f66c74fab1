//! divrl's progress bars: one constructor; each caller gives its line's template.

/// A bar of `len` steps drawn with `template` (indicatif's syntax), or a hidden one of the same
/// length when `show` is false (logs then carry the progress). A template indicatif rejects
/// falls back to its default bar rather than failing a run.
pub fn bar(len: u64, show: bool, template: &str) -> indicatif::ProgressBar {
    let pb = if show {
        indicatif::ProgressBar::new(len)
    } else {
        indicatif::ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::hidden())
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb
}

#[cfg(test)]
mod tests {
    use super::bar;

    #[test]
    fn hidden_bars_still_count_and_bad_templates_fall_back() {
        let pb = bar(5, false, "{bar:30} {pos}/{len}");
        pb.inc(3);
        assert_eq!(pb.position(), 3);
        assert_eq!(pb.length(), Some(5));
        assert!(pb.is_hidden());
        let pb = bar(2, false, "{unclosed");
        pb.inc(1);
        assert_eq!(pb.position(), 1);
    }
}
