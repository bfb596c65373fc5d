//! Synthetic Discussion Framework inputs (personas, topics, instructions, configs) and outputs.
