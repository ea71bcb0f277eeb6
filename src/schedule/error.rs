//! Errors of the schedule engine. Each names the field and the offending token, so that the
//! controller can put it in a `Ready=False` condition and the CLI in its one-line message.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl Field {
    pub fn is_day(self) -> bool {
        matches!(self, Field::DayOfMonth | Field::DayOfWeek)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Second => "second",
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfMonth => "day-of-month",
            Field::Month => "month",
            Field::DayOfWeek => "day-of-week",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldProblem {
    OutOfRange { min: u32, max: u32 },
    BadStep,
    ReversedRange,
    UnknownName,
    BadNth,
    Syntax,
    NeverMatches,
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldProblem::OutOfRange { min, max } => write!(f, "value out of range {min}-{max}"),
            FieldProblem::BadStep => {
                f.write_str("step must be a whole number from 1 to the field's maximum")
            }
            FieldProblem::ReversedRange => f.write_str("range start is after its end"),
            FieldProblem::UnknownName => f.write_str("unknown name"),
            FieldProblem::BadNth => f.write_str("'#' needs an occurrence from 1 to 5"),
            FieldProblem::Syntax => f.write_str("not a number, name, range, step or list"),
            FieldProblem::NeverMatches => f.write_str("no selected month has such a day"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("empty schedule expression")]
    Empty,
    #[error(
        "expected 5 fields (min hour dom mon dow) or 6 (sec min hour dom mon dow), got {count}"
    )]
    FieldCount { count: usize },
    #[error("invalid {field} field {token:?}: {problem}")]
    Field {
        field: Field,
        token: String,
        problem: FieldProblem,
    },
    #[error(
        "unknown descriptor {0:?} (expected @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly or @every <duration>)"
    )]
    UnknownDescriptor(String),
    #[error(
        "invalid @every duration {0:?}: expected a positive duration such as 90s, 15m or 1h30m"
    )]
    InvalidDuration(String),
    #[error("@every needs spec.startDate: its ticks are startDate + k * duration")]
    EveryWithoutStartDate,
    #[error("unknown time zone {0:?}: expected an IANA name such as Europe/Berlin")]
    UnknownTimezone(String),
}

impl ScheduleError {
    /// The part of the input the error is about, for conditions and events.
    pub fn token(&self) -> Option<&str> {
        match self {
            ScheduleError::Field { token, .. } => Some(token),
            ScheduleError::UnknownDescriptor(t)
            | ScheduleError::InvalidDuration(t)
            | ScheduleError::UnknownTimezone(t) => Some(t),
            _ => None,
        }
    }

    /// Condition reason: an unknown zone is `InvalidTimezone`, everything else `InvalidSchedule`.
    pub fn reason(&self) -> &'static str {
        match self {
            ScheduleError::UnknownTimezone(_) => "InvalidTimezone",
            _ => "InvalidSchedule",
        }
    }
}
