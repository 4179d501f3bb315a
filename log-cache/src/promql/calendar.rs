//! The calendar fields of `day_of_month`, `day_of_week`, `day_of_year`, `days_in_month`, `hour`,
//! `minute`, `month` and `year`: the UTC date of a sample value read as unix seconds.
//!
//! Prometheus converts the value with Go's `int64(v)` and reads the date with Go's `time` package,
//! so this module does the same arithmetic, wrapping where Go's does: any float, NaN and ±Inf
//! included, gets the answer Prometheus gives, and none can panic. (Go 1.19's `absDate`, which
//! counts days from the year −292277022399 in unsigned 64-bit arithmetic.)

/// A calendar field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DateField {
    DayOfMonth,
    DayOfWeek,
    DayOfYear,
    DaysInMonth,
    Hour,
    Minute,
    Month,
    Year,
}

const SECONDS_PER_MINUTE: u64 = 60;
const SECONDS_PER_HOUR: u64 = 60 * SECONDS_PER_MINUTE;
const SECONDS_PER_DAY: u64 = 24 * SECONDS_PER_HOUR;
const SECONDS_PER_WEEK: u64 = 7 * SECONDS_PER_DAY;
const DAYS_PER_400_YEARS: u64 = 365 * 400 + 97;
const DAYS_PER_100_YEARS: u64 = 365 * 100 + 24;
const DAYS_PER_4_YEARS: u64 = 365 * 4 + 1;
/// Go's `absoluteZeroYear`: the year the unsigned day count starts from.
const ABSOLUTE_ZERO_YEAR: i64 = -292_277_022_399;
/// Go's `unixToInternal + internalToAbsolute`: unix seconds to seconds since the absolute zero year.
const UNIX_TO_ABSOLUTE: i64 = 9_223_372_028_715_321_600;
/// Days before the first of each month in a common year, and 365 at the end.
const DAYS_BEFORE: [u64; 13] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 365];

/// Go's `int64(v)` on amd64: truncation, with NaN and out-of-range values giving `i64::MIN`.
pub(crate) fn go_float_to_int64(v: f64) -> i64 {
    // 2^63 exactly; `v as i64` would saturate instead.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    // NaN is outside every range too.
    if !(-TWO_63..TWO_63).contains(&v) {
        i64::MIN
    } else {
        v as i64
    }
}

/// The field of the UTC instant `unix_seconds`.
pub(crate) fn date_field(field: DateField, unix_seconds: i64) -> f64 {
    // Reinterpreting the wrapped sum as unsigned is what Go's `uint64(...)` does.
    let abs = unix_seconds.wrapping_add(UNIX_TO_ABSOLUTE) as u64;
    let value = match field {
        DateField::Hour => (abs % SECONDS_PER_DAY / SECONDS_PER_HOUR) as i64,
        DateField::Minute => (abs % SECONDS_PER_HOUR / SECONDS_PER_MINUTE) as i64,
        // January 1 of the absolute zero year was a Monday (1).
        DateField::DayOfWeek => (abs.wrapping_add(SECONDS_PER_DAY) % SECONDS_PER_WEEK / SECONDS_PER_DAY) as i64,
        DateField::Year => absolute_date(abs).year,
        DateField::DayOfYear => absolute_date(abs).yday as i64 + 1,
        DateField::Month => absolute_date(abs).month as i64,
        DateField::DayOfMonth => absolute_date(abs).day as i64,
        DateField::DaysInMonth => {
            let date = absolute_date(abs);
            days_in_month(date.month, date.year)
        }
    };
    value as f64
}

struct Date {
    year: i64,
    /// 1 to 12.
    month: u64,
    /// 1 to 31.
    day: u64,
    /// 0 to 365.
    yday: u64,
}

/// Go's `absDate(abs, true)`.
fn absolute_date(abs: u64) -> Date {
    let mut d = abs / SECONDS_PER_DAY;

    let mut n = d / DAYS_PER_400_YEARS;
    let mut y = 400 * n;
    d -= DAYS_PER_400_YEARS * n;

    // The last 100-year cycle has one extra leap day, so its last day would count as a fifth cycle.
    n = d / DAYS_PER_100_YEARS;
    n -= n >> 2;
    y += 100 * n;
    d -= DAYS_PER_100_YEARS * n;

    n = d / DAYS_PER_4_YEARS;
    y += 4 * n;
    d -= DAYS_PER_4_YEARS * n;

    // Likewise the last year of a 4-year cycle is a leap year.
    n = d / 365;
    n -= n >> 2;
    y += n;
    d -= 365 * n;

    // `y` < 2^40 (the day count is below 2^64 / 86400), so both conversions are exact.
    let year = (y as i64).wrapping_add(ABSOLUTE_ZERO_YEAR);
    let yday = d;
    let mut day = yday;
    if is_leap(year) {
        if day == 31 + 29 - 1 {
            return Date { year, month: 2, day: 29, yday };
        }
        if day > 31 + 29 - 1 {
            // After the leap day: count as in a common year.
            day -= 1;
        }
    }
    // Every month has at most 31 days, so this estimate is at most one month low.
    let mut month = (day / 31) as usize;
    let end = DAYS_BEFORE.get(month + 1).copied().unwrap_or(365);
    let begin = if day >= end {
        month += 1;
        end
    } else {
        DAYS_BEFORE.get(month).copied().unwrap_or(0)
    };
    Date { year, month: month as u64 + 1, day: day - begin + 1, yday }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(month: u64, year: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_known_instants() {
        // 2023-11-14T22:13:20Z, a Tuesday.
        let t = 1_700_000_000;
        assert_eq!(date_field(DateField::Year, t), 2023.0);
        assert_eq!(date_field(DateField::Month, t), 11.0);
        assert_eq!(date_field(DateField::DayOfMonth, t), 14.0);
        assert_eq!(date_field(DateField::DayOfWeek, t), 2.0);
        assert_eq!(date_field(DateField::DayOfYear, t), 318.0);
        assert_eq!(date_field(DateField::DaysInMonth, t), 30.0);
        assert_eq!(date_field(DateField::Hour, t), 22.0);
        assert_eq!(date_field(DateField::Minute, t), 13.0);
        // 2024-02-29T00:00:00Z, a leap day.
        let leap = 1_709_164_800;
        assert_eq!(date_field(DateField::Month, leap), 2.0);
        assert_eq!(date_field(DateField::DayOfMonth, leap), 29.0);
        assert_eq!(date_field(DateField::DaysInMonth, leap), 29.0);
        assert_eq!(date_field(DateField::DayOfYear, leap), 60.0);
        // The epoch, a Thursday, and the second before it.
        assert_eq!(date_field(DateField::DayOfWeek, 0), 4.0);
        assert_eq!(date_field(DateField::Year, -1), 1969.0);
        assert_eq!(date_field(DateField::DayOfYear, -1), 365.0);
        assert_eq!(date_field(DateField::Hour, -1), 23.0);
    }

    #[test]
    fn any_float_converts_like_go() {
        assert_eq!(go_float_to_int64(f64::NAN), i64::MIN);
        assert_eq!(go_float_to_int64(f64::INFINITY), i64::MIN);
        assert_eq!(go_float_to_int64(-1e300), i64::MIN);
        assert_eq!(go_float_to_int64(-1.9), -1);
        assert_eq!(go_float_to_int64(1.9), 1);
        // Answers of promtool 2.42 for `year(vector(NaN))` and friends.
        let nan = go_float_to_int64(f64::NAN);
        assert_eq!(date_field(DateField::Year, nan), 292_277_026_596.0);
        assert_eq!(date_field(DateField::Year, go_float_to_int64(5e18)), 158_443_694_504.0);
        assert_eq!(date_field(DateField::Month, go_float_to_int64(5e18)), 1.0);
        assert_eq!(date_field(DateField::DayOfMonth, go_float_to_int64(5e18)), 22.0);
        assert_eq!(date_field(DateField::Year, go_float_to_int64(-5e18)), -158_443_690_565.0);
        assert_eq!(date_field(DateField::DayOfWeek, go_float_to_int64(-5e18)), 5.0);
        assert_eq!(date_field(DateField::DaysInMonth, go_float_to_int64(-5e18)), 31.0);
        for t in [i64::MIN, i64::MAX, i64::MIN + 1, -UNIX_TO_ABSOLUTE, UNIX_TO_ABSOLUTE] {
            for field in [DateField::Year, DateField::DaysInMonth, DateField::DayOfWeek, DateField::Hour] {
                assert!(date_field(field, t).is_finite());
            }
        }
    }
}
