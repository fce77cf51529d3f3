//! The overview's chart: decisions per day as grouped bars (grants, denials, expiries), drawn
//! on the server as inline SVG.
//!
//! No script and no image request: the chart is part of the page, so the strict
//! Content-Security-Policy holds, and it scales with the page (a `viewBox`, sized by CSS).
//! Colours come from the stylesheet (classes, not `style` attributes, which the policy forbids).
//! For screen readers the SVG is one image with a title and a summary; the same numbers are in
//! a table under it.

use chrono::NaiveDate;
use maud::{Markup, html};

/// What happened to a business's consent on one day (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayCounts {
    pub day: NaiveDate,
    pub grants: u64,
    pub denials: u64,
    pub expiries: u64,
}

/// Plot area and margins, in SVG user units.
const DAY_WIDTH: u64 = 30;
const BAR_WIDTH: u64 = 8;
const PLOT_HEIGHT: u64 = 200;
const LEFT: u64 = 44;
const TOP: u64 = 12;
const BOTTOM: u64 = 28;

/// The smallest "round" number (1, 2 or 5 times a power of ten) at least `n`, so the axis
/// reads in round steps.
fn nice_ceiling(n: u64) -> u64 {
    let mut base = 1u64;
    loop {
        for step in [1, 2, 5] {
            if let Some(v) = base.checked_mul(step)
                && v >= n
            {
                return v;
            }
        }
        match base.checked_mul(10) {
            Some(b) => base = b,
            None => return u64::MAX,
        }
    }
}

/// The bar height (user units) of `count` on an axis that tops at `max`.
fn height(count: u64, max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    ((count as u128 * PLOT_HEIGHT as u128) / max as u128) as u64
}

/// The chart of `days` (oldest first), with `title_id` naming its title element (so the page
/// can label it).
pub fn render(days: &[DayCounts], title_id: &str) -> Markup {
    let max = nice_ceiling(
        days.iter()
            .map(|d| d.grants.max(d.denials).max(d.expiries))
            .max()
            .unwrap_or(0)
            .max(1),
    );
    let width = LEFT + DAY_WIDTH * days.len() as u64 + 8;
    let height_total = TOP + PLOT_HEIGHT + BOTTOM;
    let baseline = TOP + PLOT_HEIGHT;
    let totals = days.iter().fold((0, 0, 0), |(g, d, e), day| {
        (g + day.grants, d + day.denials, e + day.expiries)
    });
    let summary = format!(
        "{} days: {} grants, {} denials, {} expiries in all; the busiest day had {} of one kind.",
        days.len(),
        totals.0,
        totals.1,
        totals.2,
        days.iter()
            .map(|d| d.grants.max(d.denials).max(d.expiries))
            .max()
            .unwrap_or(0)
    );
    let desc_id = format!("{title_id}-desc");
    html! {
        svg class="chart" viewBox={ "0 0 " (width) " " (height_total) } role="img"
            aria-labelledby={ (title_id) " " (desc_id) } xmlns="http://www.w3.org/2000/svg" {
            title id=(title_id) { "Decisions per day" }
            desc id=(desc_id) { (summary) }
            // Grid lines and the axis labels: 0, half and the top.
            @for fraction in [0u64, 1, 2] {
                @let y = baseline - PLOT_HEIGHT * fraction / 2;
                line class="grid" x1=(LEFT) x2=(width - 4) y1=(y) y2=(y) {}
                text class="axis" x=(LEFT - 6) y=(y + 4) text-anchor="end" {
                    (max * fraction / 2)
                }
            }
            @for (i, d) in days.iter().enumerate() {
                @let x0 = LEFT + DAY_WIDTH * i as u64 + 3;
                @for (k, (class, count, label)) in [
                    ("bar grant", d.grants, "grants"),
                    ("bar deny", d.denials, "denials"),
                    ("bar expire", d.expiries, "expiries"),
                ].into_iter().enumerate() {
                    @let h = height(count, max);
                    rect class=(class) x=(x0 + BAR_WIDTH * k as u64) y=(baseline - h)
                        width=(BAR_WIDTH) height=(h) {
                        title { (d.day.format("%-d %b")) ": " (count) " " (label) }
                    }
                }
                // A date under every fifth day, and under the last.
                @if i % 5 == 0 || i + 1 == days.len() {
                    text class="axis" x=(x0 + BAR_WIDTH * 3 / 2) y=(baseline + 18)
                        text-anchor="middle" { (d.day.format("%-d %b")) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(n: u32, grants: u64, denials: u64, expiries: u64) -> DayCounts {
        DayCounts {
            day: NaiveDate::from_ymd_opt(2026, 11, n).unwrap(),
            grants,
            denials,
            expiries,
        }
    }

    #[test]
    fn the_axis_tops_at_a_round_number() {
        let cases = [
            (1, 1),
            (2, 2),
            (3, 5),
            (7, 10),
            (11, 20),
            (120, 200),
            (501, 1000),
        ];
        for (n, want) in cases {
            assert_eq!(nice_ceiling(n), want, "{n}");
        }
        assert_eq!(nice_ceiling(u64::MAX), u64::MAX);
    }

    #[test]
    fn bars_are_proportional_and_titled() {
        let svg = render(&[day(1, 10, 5, 0), day(2, 0, 0, 2)], "c").into_string();
        // Axis top 10: 10 grants fill the plot, 5 denials half of it.
        assert!(svg.contains(r#"class="bar grant" x="47" y="12" width="8" height="200""#));
        assert!(svg.contains(r#"class="bar deny" x="55" y="112" width="8" height="100""#));
        assert!(svg.contains("<title>2 Nov: 2 expiries</title>"), "{svg}");
        assert!(svg.contains("2 days: 10 grants, 5 denials, 2 expiries in all"));
        assert!(svg.contains(r#"aria-labelledby="c c-desc""#));
    }

    #[test]
    fn an_empty_month_draws_an_empty_plot() {
        let days: Vec<_> = (1..=30).map(|n| day(n, 0, 0, 0)).collect();
        let svg = render(&days, "c").into_string();
        assert_eq!(svg.matches(r#"height="0""#).count(), 90);
        assert!(svg.contains("30 Nov"));
    }
}
