//! Importers and exporters, one file per external format, all streaming: a corpus never
//! has to fit in memory. Importers hand each finished [`Conversation`] to a sink and
//! return an [`ImportReport`]; bad input becomes a [`CorpusError`] naming the file, the
//! line or record, and the field.

pub mod build;
pub mod cmv;
pub mod convokit;
mod error;
pub mod esconv;
pub mod input;
pub mod parquet_export;
pub mod personachat;
mod report;
pub mod sdf;
pub mod table;
pub mod trl;

use agora_core::Conversation;

pub use error::{CorpusError, Location};
pub use report::ImportReport;

/// The conversation corpora agora imports. Adding one: see CONTRIBUTING.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Tan et al. 2016 `cmv_*.jsonlist` (plain, .gz, .bz2).
    Cmv,
    /// thu-coai ESConv.json.
    Esconv,
    /// Persona-Chat / ConvAI2 `*_original_no_cands.txt` and variants.
    PersonaChat,
    /// Synthetic Discussion Framework conversation output JSON (a file or a folder).
    SdfConversation,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::Cmv, Format::Esconv, Format::PersonaChat, Format::SdfConversation];

    /// The name used on the command line and in the store.
    pub fn name(self) -> &'static str {
        match self {
            Format::Cmv => "cmv",
            Format::Esconv => "esconv",
            Format::PersonaChat => "personachat",
            Format::SdfConversation => "sdf",
        }
    }

    pub fn from_name(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|format| format.name() == name)
    }
}

/// Options shared by every importer.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Skip records that fail to parse (counting and reporting each) instead of
    /// stopping at the first one.
    pub keep_going: bool,
    /// ESConv: merge consecutive messages of the same speaker into one turn.
    pub merge_consecutive: bool,
}

/// Where importers deliver conversations. Returning an error stops the import.
pub type Sink<'a> = dyn FnMut(Conversation) -> Result<(), CorpusError> + 'a;

/// Imports `path` in `format`, handing every conversation to `sink` as soon as it is
/// complete.
pub fn import(
    format: Format,
    path: &std::path::Path,
    options: &ImportOptions,
    sink: &mut Sink<'_>,
) -> Result<ImportReport, CorpusError> {
    match format {
        Format::Cmv => cmv::import(path, options, sink),
        Format::Esconv => esconv::import(path, options, sink),
        Format::PersonaChat => personachat::import(path, options, sink),
        Format::SdfConversation => sdf::import_conversations(path, options, sink),
    }
}
