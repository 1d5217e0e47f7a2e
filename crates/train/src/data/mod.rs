//! Training data: the GuardReasonerTrain layout, the labelled sources it is built from, and the
//! file formats they come in.

pub mod pairs;
pub mod record;
pub mod sources;
pub mod table;
pub mod traces;

pub use pairs::{read_pairs, write_pairs, PreferencePair};
pub use record::{read_records, write_records, TrainRecord};
pub use sources::{Labelled, Loaded, Source};
