//! The combinations of HF PEFT's `add_weighted_adapter`, by the names HF gives them, and what each one does:
//! which factors it combines (the factors themselves, stacked, or the full updates then factored again by SVD)
//! and how it combines them (a weighted sum, with or without pruning and sign election first).
//!
//! ```
//! use peft_merge::{Combination, Layout, MajoritySignMethod, Prune};
//! let ties: Combination = "ties_svd".parse().unwrap();
//! assert_eq!((ties.layout(), ties.prune(), ties.elects_sign()), (Layout::Svd, Prune::Magnitude, true));
//! assert!(ties.needs_density() && !Combination::Linear.needs_density());
//! assert_eq!(Combination::DareLinear.to_string(), "dare_linear");
//! assert!("sum".parse::<Combination>().unwrap_err().to_string().contains("use one of linear, cat, svd"));
//! assert_eq!("frequency".parse::<MajoritySignMethod>().unwrap(), MajoritySignMethod::Frequency);
//! ```

use std::fmt;
use std::str::FromStr;

use crate::error::MergeError;

/// One of HF PEFT's combination types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combination {
    /// Weighted sum of the A factors and of the B factors (`sqrt(|w s|)` on each side, the sign on A): the
    /// same rank out, and only an approximation of the weighted sum of the updates (cross terms).
    Linear,
    /// A factors stacked (each times `w s`) and B factors side by side: the exact weighted sum of the updates,
    /// of rank the sum of the ranks.
    Cat,
    /// The exact weighted sum of the updates `s B A`, truncated to the new rank by SVD.
    Svd,
    /// TIES on the factors: magnitude pruning, sign election, mean of the agreeing entries.
    Ties,
    /// TIES on the full updates, then SVD.
    TiesSvd,
    /// DARE on the factors: random pruning with rescaling, then a weighted sum.
    DareLinear,
    /// DARE then TIES' sign election on the factors.
    DareTies,
    /// DARE on the full updates, then SVD.
    DareLinearSvd,
    /// DARE and sign election on the full updates, then SVD.
    DareTiesSvd,
    /// Magnitude pruning then a weighted sum, on the factors.
    MagnitudePrune,
    /// Magnitude pruning then a weighted sum, on the full updates, then SVD.
    MagnitudePruneSvd,
}

/// What a combination combines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The A factors together and the B factors together, entry by entry (one rank for all adapters).
    Factors,
    /// The factors stacked (rank: the sum of the ranks).
    Concatenated,
    /// The full updates `s B A`, factored again by SVD.
    Svd,
}

/// How a combination prunes each adapter's tensor before the sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prune {
    /// Nothing is pruned.
    None,
    /// The entries of largest magnitude are kept (a fraction `density` of them).
    Magnitude,
    /// Each entry is kept with probability `density` and then divided by it (DARE).
    Random,
}

/// How TIES elects the sign of each entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MajoritySignMethod {
    /// The sign of the sum of the (pruned, unweighted) entries.
    #[default]
    Total,
    /// The sign held by more adapters (ties go to +).
    Frequency,
}

const ALL: [Combination; 11] = [
    Combination::Linear,
    Combination::Cat,
    Combination::Svd,
    Combination::Ties,
    Combination::TiesSvd,
    Combination::DareLinear,
    Combination::DareTies,
    Combination::DareLinearSvd,
    Combination::DareTiesSvd,
    Combination::MagnitudePrune,
    Combination::MagnitudePruneSvd,
];

impl Combination {
    /// HF PEFT's name (`combination_type`).
    pub fn name(self) -> &'static str {
        match self {
            Combination::Linear => "linear",
            Combination::Cat => "cat",
            Combination::Svd => "svd",
            Combination::Ties => "ties",
            Combination::TiesSvd => "ties_svd",
            Combination::DareLinear => "dare_linear",
            Combination::DareTies => "dare_ties",
            Combination::DareLinearSvd => "dare_linear_svd",
            Combination::DareTiesSvd => "dare_ties_svd",
            Combination::MagnitudePrune => "magnitude_prune",
            Combination::MagnitudePruneSvd => "magnitude_prune_svd",
        }
    }

    /// Every combination, in HF PEFT's documentation order.
    pub fn all() -> &'static [Combination] {
        &ALL
    }

    /// What it combines.
    pub fn layout(self) -> Layout {
        match self {
            Combination::Cat => Layout::Concatenated,
            Combination::Svd
            | Combination::TiesSvd
            | Combination::DareLinearSvd
            | Combination::DareTiesSvd
            | Combination::MagnitudePruneSvd => Layout::Svd,
            _ => Layout::Factors,
        }
    }

    /// How it prunes.
    pub fn prune(self) -> Prune {
        match self {
            Combination::Ties
            | Combination::TiesSvd
            | Combination::MagnitudePrune
            | Combination::MagnitudePruneSvd => Prune::Magnitude,
            Combination::DareLinear
            | Combination::DareTies
            | Combination::DareLinearSvd
            | Combination::DareTiesSvd => Prune::Random,
            _ => Prune::None,
        }
    }

    /// Whether it elects a sign per entry and averages the agreeing entries (TIES), instead of summing.
    pub fn elects_sign(self) -> bool {
        matches!(
            self,
            Combination::Ties
                | Combination::TiesSvd
                | Combination::DareTies
                | Combination::DareTiesSvd
        )
    }

    /// Whether it needs `density`.
    pub fn needs_density(self) -> bool {
        self.prune() != Prune::None
    }
}

impl fmt::Display for Combination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Combination {
    type Err = MergeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL.iter()
            .copied()
            .find(|c| c.name() == s)
            .ok_or_else(|| MergeError::UnknownCombination {
                given: s.to_string(),
                known: ALL.map(Combination::name).join(", "),
            })
    }
}

impl MajoritySignMethod {
    /// HF PEFT's name.
    pub fn name(self) -> &'static str {
        match self {
            MajoritySignMethod::Total => "total",
            MajoritySignMethod::Frequency => "frequency",
        }
    }
}

impl fmt::Display for MajoritySignMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MajoritySignMethod {
    type Err = MergeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "total" => Ok(MajoritySignMethod::Total),
            "frequency" => Ok(MajoritySignMethod::Frequency),
            _ => Err(MergeError::UnknownSignMethod {
                given: s.to_string(),
            }),
        }
    }
}
