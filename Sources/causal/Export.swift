import ArgumentParser
import CausalLM
import Foundation

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Merge a LoRA adapter into its base model and write the result as a Hugging Face model directory.",
        discussion: """
        Every adapted weight becomes W + s·B·A (s = lora_alpha / r, or / sqrt(r) with rsLoRA); the output directory \
        holds config.json and model.safetensors (F32) and loads with 'causal generate --model OUT' and with \
        transformers. A Hugging Face directory base keeps its tensor names, config and tokenizer files; a GGUF base \
        (plain LLaMA, e.g. SmolLM2) is written as a LLaMA checkpoint whose trainer_state.json names the GGUF file, \
        which supplies the tokenizer and chat template. With --gguf (a GGUF base of any family), OUT is a GGUF file \
        instead: the base's metadata and tensors, each adapted matrix replaced by its merged F32 weights. See \
        docs/adapters.md.
        """)

    @Option(name: .long, help: "The base model: a GGUF file, a Hugging Face model directory or a known name (default: SmolLM2-135M-Instruct Q4_1).")
    var model: String?

    @Option(name: .long, help: ArgumentHelp("The PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors).", valueName: "dir"))
    var adapter: String

    @Flag(name: .long, help: "Merge the adapter into the base weights (the only export there is so far).")
    var merge = false

    @Flag(name: .long, help: "Write a GGUF file (from a GGUF base) instead of a Hugging Face directory.")
    var gguf = false

    @Option(name: .long, help: ArgumentHelp("The output directory (created; files in it are replaced), or with --gguf the output file.", valueName: "path"))
    var out: String

    @Option(name: .long, help: "Worker threads (default: all cores).")
    var threads: Int?

    func validate() throws {
        if !merge { throw ValidationError("give --merge: merging the adapter into the base weights is the only export so far") }
        if out.isEmpty { throw ValidationError("--out must not be empty") }
        if let t = threads, t < 1 { throw ValidationError("--threads must be at least 1") }
    }

    func run() throws {
        try reportingErrors {
            // The merge reads the base's weights itself (dequantized to fp32), so the model loads in place.
            let bundle = try ModelBundle(path: model, precision: .fast, threads: threads)
            guard let lora = try loadAdapter(adapter, for: bundle) else { return }
            if gguf { try lora.exportMergedGGUF(base: bundle, to: out) } else { try lora.exportMerged(base: bundle, to: out) }
            FileHandle.standardError.write(Data("causal export: \(lora.slots.count) adapted matrices merged (rank \(lora.config.rank), scale \(lora.config.scale)) into \(out)\n".utf8))
        }
    }
}
