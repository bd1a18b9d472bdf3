import ArgumentParser
import CausalLM
import Foundation

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Mean loss and perplexity of a model over the scored tokens of a fine-tuning dataset.",
        discussion: """
        --data is JSONL as for `causal train`; only the response tokens are scored (all tokens with \
        --train-on-prompt). --model is a GGUF file or a checkpoint directory written by `causal train` (its tokenizer \
        and chat template come from --tokenizer, by default the GGUF it was trained from). Perplexity = exp(mean loss).
        """)

    @Option(name: .long, help: "A GGUF file or a checkpoint directory (default: SmolLM2-135M-Instruct).") var model: String?
    @Option(name: .long, help: "For a checkpoint directory: the GGUF whose tokenizer and chat template to use (default: its base model).") var tokenizer: String?
    @Option(name: .long, help: "Evaluation data (JSONL).") var data: String
    @Flag(name: .long, help: #"Print one JSON object: {"loss", "perplexity", "scored_tokens", "examples", "skipped"}."#) var json = false
    @Option(name: .long, help: "Tokens per forward pass.") var batchTokens: Int = 4096
    @Option(name: .long, help: "Truncate examples to this many tokens (default: the model's context length).") var maxLength: Int?
    @Option(name: .long, help: ArgumentHelp(AttentionArgument.help)) var attention: AttentionArgument = .causal
    @Flag(name: .long, help: "Score the prompt tokens too.") var trainOnPrompt = false
    @Option(name: .long, help: "Worker threads (default: all cores).") var threads: Int?
    @Option(name: .long, help: "cpu only for now: eval computes its losses with the training code, which runs on the CPU (cuda is an error; docs/cuda.md).") var device: DeviceArgument = .cpu
    @Option(name: .long, help: "A BERT directory (masked-LM): share of the tokens masked in lines without labels (evaluation masks, seed 0).") var maskRate: Double = 0.15
    @Option(name: .long, help: "A BERT directory (masked-LM): write the logits of every masked position to this file (JSON lines).") var logits: String?
    @Option(name: .long, help: "A LoRA adapter directory (PEFT format, e.g. written by causal train --lora-rank) applied to --model. A --model directory holding adapter_config.json is read as such an adapter over its base model.") var adapter: String?

    func validate() throws {
        if batchTokens < 1 { throw ValidationError("--batch-tokens must be at least 1") }
        if let m = maxLength, m < 2 { throw ValidationError("--max-length must be at least 2") }
        if let t = threads, t < 1 { throw ValidationError("--threads must be at least 1") }
        if device == .cuda { throw ValidationError("--device cuda: causal eval runs on the CPU only (its losses come from the training code, which has no CUDA backend); use --device cpu") }
        try attention.check(trainOnPrompt: trainOnPrompt)
    }

    func run() throws {
        try reportingErrors {
            // An encoder-decoder model (T5 directory or its checkpoint) scores (input, labels) pairs: TrainT5.swift.
            var isDir: ObjCBool = false
            // A LoRA run directory given as --model: its base model (trainer_state.json) with the adapter.
            var adapterDir = adapter, modelPath = model
            if adapter == nil, let m = model, FileManager.default.fileExists(atPath: m + "/adapter_config.json") {
                guard let base = try LlamaCheckpoint.tokenizerSource(ofCheckpoint: m) else {
                    throw CausalError.invalidArgument("\(m): a LoRA adapter without a recorded base model; give the base as --model and this as --adapter")
                }
                adapterDir = m; modelPath = base
            }
            if let adapterDir {
                return try runFrozen(try ModelBundle(path: modelPath, precision: .fast, threads: threads), adapter: adapterDir)
            }
            if let m = model, isBertDirectory(m) { return try runMLM(directory: m) }   // masked-LM: TrainMLM.swift
            if let m = model, try ModelBundle.isEncoderDecoder(path: m) { return try runT5(modelDirectory: m) }
            let params: LlamaParameters
            let bundle: ModelBundle
            if let m = model, FileManager.default.fileExists(atPath: m, isDirectory: &isDir), isDir.boolValue {
                params = try LlamaCheckpoint.load(directory: m)
                guard let base = try tokenizer ?? LlamaCheckpoint.tokenizerSource(ofCheckpoint: m) else {
                    throw CausalError.invalidArgument("\(m): no base model recorded; give --tokenizer GGUF")
                }
                bundle = try ModelBundle(path: base, precision: .fast, threads: threads)
                guard bundle.model.vocabularySize == params.config.vocabularySize else {
                    throw CausalError.invalidArgument("\(base): its vocabulary (\(bundle.model.vocabularySize)) does not match the checkpoint's (\(params.config.vocabularySize))")
                }
            } else {
                bundle = try ModelBundle(path: modelPath, precision: .fast, threads: threads)
                // A plain LLaMA is scored in fp32 as fine-tuning sees it; other families through the frozen base.
                guard (try bundle.decoder).config.isPlainLlama else { return try runFrozen(bundle, adapter: nil) }
                params = LlamaParameters(model: try bundle.llama)
            }
            let enc = try SFTEncoder(bundle: bundle, maxLength: maxLength ?? params.config.contextLength, trainOnPrompt: trainOnPrompt)
            let ds = try enc.load(path: data)
            if !ds.skipped.isEmpty {
                FileHandle.standardError.write(Data("causal: \(data): skipped \(ds.skipped.count) example(s): \(ds.skipped[0].reason)\n".utf8))
            }
            let trainer = LlamaTrainer(parameters: params, attention: attention.value, pool: bundle.pool)
            let l = try trainer.evaluate(ds.examples, maxBatchTokens: batchTokens)
            if json {
                writeOut(#"{"loss": \#(l.meanLoss), "perplexity": \#(exp(l.meanLoss)), "scored_tokens": \#(l.scoredTokens), "examples": \#(ds.examples.count), "skipped": \#(ds.skipped.count)}"# + "\n")
            } else {
                writeOut(String(format: "loss %.6f  perplexity %.4f  (%d scored tokens, %d examples)\n", l.meanLoss, exp(l.meanLoss), l.scoredTokens, ds.examples.count))
            }
        }
    }

    /// A frozen base model (any decoder family, in its own weight types), with a LoRA adapter if given.
    func runFrozen(_ bundle: ModelBundle, adapter: String?) throws {
        let base = try bundle.decoder
        let lora = try adapter.map { try LoRAAdapter.load(directory: $0, model: base) }
        let enc = try SFTEncoder(bundle: bundle, maxLength: maxLength ?? base.config.contextLength, trainOnPrompt: trainOnPrompt)
        let ds = try enc.load(path: data)
        if !ds.skipped.isEmpty {
            FileHandle.standardError.write(Data("causal: \(data): skipped \(ds.skipped.count) example(s): \(ds.skipped[0].reason)\n".utf8))
        }
        let trainer = try DecoderTrainer(base: base, adapter: lora, attention: attention.value, pool: bundle.pool)
        report(try trainer.evaluate(ds.examples, maxBatchTokens: batchTokens), examples: ds.examples.count, skipped: ds.skipped.count)
    }

    func report(_ l: BatchLoss, examples: Int, skipped: Int) {
        if json {
            writeOut(#"{"loss": \#(l.meanLoss), "perplexity": \#(exp(l.meanLoss)), "scored_tokens": \#(l.scoredTokens), "examples": \#(examples), "skipped": \#(skipped)}"# + "\n")
        } else {
            writeOut(String(format: "loss %.6f  perplexity %.4f  (%d scored tokens, %d examples)\n", l.meanLoss, exp(l.meanLoss), l.scoredTokens, examples))
        }
    }
}
