//! The deletion guard as a pure decision (DESIGN §6): a run that would deprovision too many
//! accounts is held for `POST /reconcile-runs/{id}/approve` instead of applied. It protects
//! against a broken HR feed or a wrong scope turning every account into an orphan at once.
use crate::settings::DeletionGuard;

/// Below this many accounts in the app the fraction rule does not apply: one leaver in a small
/// app is never held.
pub const MIN_ACCOUNTS_FOR_FRACTION: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardDecision {
    /// Apply the deprovisions.
    Proceed,
    /// Hold them until approved; `reason` is for the operator (the run's report and logs).
    Hold { reason: String },
}

/// Whether a run may deactivate or delete `deprovisions` accounts of an app that holds
/// `app_accounts` accounts (every account the run read, managed or not).
///
/// Held when `deprovisions > max_count`, or when `app_accounts >= 10` and
/// `deprovisions / app_accounts > max_fraction`. Both limits are strict: exactly `max_count`,
/// or exactly the fraction, still proceeds.
#[must_use]
pub fn deletion_guard(
    guard: &DeletionGuard,
    deprovisions: usize,
    app_accounts: usize,
) -> GuardDecision {
    let max_count = usize::try_from(guard.max_count).unwrap_or(usize::MAX);
    if deprovisions > max_count {
        return GuardDecision::Hold {
            reason: format!(
                "the run would deprovision {deprovisions} accounts, more than \
                 deletion_guard.max_count ({max_count})"
            ),
        };
    }
    if app_accounts >= MIN_ACCOUNTS_FOR_FRACTION {
        // Account counts are far below 2^52, so the conversions are exact.
        #[allow(clippy::cast_precision_loss)]
        let fraction = deprovisions as f64 / app_accounts as f64;
        if fraction > guard.max_fraction {
            return GuardDecision::Hold {
                reason: format!(
                    "the run would deprovision {deprovisions} of {app_accounts} accounts \
                     ({:.1}%), more than deletion_guard.max_fraction ({:.1}%)",
                    fraction * 100.0,
                    guard.max_fraction * 100.0
                ),
            };
        }
    }
    GuardDecision::Proceed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        max_fraction: f64,
        max_count: u32,
        deprovisions: usize,
        app_accounts: usize,
    ) -> &'static str {
        let guard = DeletionGuard {
            max_fraction,
            max_count,
            ..DeletionGuard::default()
        };
        match deletion_guard(&guard, deprovisions, app_accounts) {
            GuardDecision::Proceed => "proceed",
            GuardDecision::Hold { reason } if reason.contains("max_count") => "hold: count",
            GuardDecision::Hold { reason } if reason.contains("max_fraction") => "hold: fraction",
            GuardDecision::Hold { reason } => panic!("hold without a named limit: {reason}"),
        }
    }

    #[test]
    fn deletion_guard_holds_by_count_and_by_fraction_of_ten_or_more() {
        for (max_fraction, max_count, deprovisions, app_accounts, want) in [
            // Nothing to deprovision never holds, even with zero limits.
            (0.2, 50, 0, 0, "proceed"),
            (0.0, 0, 0, 100, "proceed"),
            // One leaver in a small app is never held, even when it is all of the app.
            (0.2, 50, 1, 1, "proceed"),
            (0.2, 50, 1, 2, "proceed"),
            (0.2, 50, 9, 9, "proceed"),
            // From ten accounts on, the fraction applies; it is strict.
            (0.2, 50, 2, 10, "proceed"),
            (0.2, 50, 3, 10, "hold: fraction"),
            (0.2, 50, 20, 100, "proceed"),
            (0.2, 50, 21, 100, "hold: fraction"),
            (0.2, 50, 10, 10, "hold: fraction"),
            // The count is strict and applies at any size, checked first.
            (0.2, 50, 50, 100_000, "proceed"),
            (0.2, 50, 51, 100_000, "hold: count"),
            (1.0, 50, 51, 51, "hold: count"),
            (0.2, 0, 1, 1, "hold: count"),
            // A fraction of 1 admits deprovisioning everything (within the count).
            (1.0, 50, 40, 40, "proceed"),
            (0.0, 50, 1, 10, "hold: fraction"),
        ] {
            assert_eq!(
                check(max_fraction, max_count, deprovisions, app_accounts),
                want,
                "max_fraction {max_fraction}, max_count {max_count}, \
                 {deprovisions} of {app_accounts}"
            );
        }
    }

    #[test]
    fn hold_reason_names_the_numbers() {
        let decision = deletion_guard(&DeletionGuard::default(), 3, 10);
        assert_eq!(
            decision,
            GuardDecision::Hold {
                reason: "the run would deprovision 3 of 10 accounts (30.0%), more than \
                         deletion_guard.max_fraction (20.0%)"
                    .to_owned()
            }
        );
    }
}
