//! The guards that hold a run before anything is pushed: the export's row count must be
//! near the size Amplitude lists, and a run may not remove more than the cohort's
//! `max_removal_ratio` of its acknowledged members, nor empty a non-empty list, unless
//! the operator says so.

use super::CohortTarget;
use super::RunOptions;
use super::run::Stop;
use super::summary::Outcome;
use crate::amplitude::CohortInfo;
use crate::export::Parsed;
use crate::members::{self, IdSet};

/// The mass-removal guard applies from this many acknowledged members.
const MASS_REMOVAL_FLOOR: usize = 100;

/// Size sanity and the mass-removal guard. Nothing is pushed when they hold.
pub fn check(
    target: &CohortTarget,
    info: &CohortInfo,
    parsed: &Parsed,
    acknowledged: &IdSet,
    options: &RunOptions,
) -> Result<(), Stop> {
    let tolerance = target.amplitude.config.size_tolerance;
    if let Some(size) = info.size.filter(|&s| s > 0) {
        let rows = parsed.counts.rows as f64;
        let share = (rows - size as f64).abs() / size as f64;
        if share > tolerance {
            return Err(Stop::failed(format!(
                "the export has {} rows but Amplitude lists {} members ({:.0}% apart, more than \
                 the {:.0}% allowed by amplitude.size_tolerance); nothing was pushed",
                parsed.counts.rows,
                size,
                share * 100.0,
                tolerance * 100.0
            )));
        }
    }

    if options.allow_mass_removal {
        return Ok(());
    }
    let current = &parsed.members;
    if current.is_empty() && !acknowledged.is_empty() {
        return Err(Stop::with(
            Outcome::Held,
            format!(
                "the export is empty but 1Flow has {} acknowledged members; nothing was pushed. \
                 If the cohort really is empty, run `cohort-sync sync {} --allow-mass-removal` \
                 (with the daemon stopped, if one runs on this SQLite state file)",
                acknowledged.len(),
                target.cohort.amplitude_id
            ),
        ));
    }
    let removes = acknowledged.len() - count_kept(acknowledged, current);
    let ratio = target.cohort.max_removal_ratio;
    if acknowledged.len() >= MASS_REMOVAL_FLOOR
        && removes as f64 > ratio * acknowledged.len() as f64
    {
        return Err(Stop::with(
            Outcome::Held,
            format!(
                "this run would remove {removes} of {} acknowledged members ({:.0}%, more than \
                 max_removal_ratio {ratio}); nothing was pushed. To proceed, run `cohort-sync sync \
                 {} --allow-mass-removal` (with the daemon stopped, if one runs on this SQLite \
                 state file), or raise max_removal_ratio for this cohort in the config (a running \
                 daemon reloads it)",
                acknowledged.len(),
                removes as f64 * 100.0 / acknowledged.len() as f64,
                target.cohort.amplitude_id
            ),
        ));
    }
    Ok(())
}

fn count_kept(acknowledged: &IdSet, current: &IdSet) -> usize {
    acknowledged.len() - members::diff(current, acknowledged).removes.len()
}
