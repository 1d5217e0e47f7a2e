//! Training data: the GuardReasonerTrain layout, the labelled sources it is built from, and the
//! file formats they come in.

pub mod record;
pub mod sources;
pub mod table;

pub use record::{read_records, write_records, TrainRecord};
pub use sources::{Labelled, Loaded, Source};
