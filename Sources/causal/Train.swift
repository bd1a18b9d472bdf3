import ArgumentParser
import CausalLM
import Foundation

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fine-tune a LLaMA model on prompt/response data (full fine-tuning in fp32, prompts masked out of the loss).",
        discussion: """
        --data (and --eval-data) is JSONL, one example per line: {"prompt": "...", "response": "..."} (optional \
        "system") or {"messages": [{"role": "...", "content": "..."}, ...]}. Prompts go through the model's chat \
        template; only the responses are scored (each assistant turn through its end-of-turn token), unless \
        --train-on-prompt. Already tokenized lines are {"input_ids": [...], "labels": [...]} (-100: not scored). \
        Examples longer than --max-length are truncated; one with nothing left to score is skipped.

        --attention picks the mask: causal; prefix (the prompt sees the whole prompt); mixed (half the heads causal, \
        half read the prompt from each token to its end; never a token after the prompt). --init random --config \
        ARCH.json trains a new model of that architecture from scratch (initialised as transformers does, seeded by \
        --seed), with --model's tokenizer and chat template.

        Each optimizer step takes the next examples (shuffled each epoch with --seed) up to --batch-tokens tokens and \
        runs them as ragged micro-batches of at most --micro-batch tokens (no padding), accumulating gradients: the \
        loss is the mean over every scored token of the step. AdamW (no weight decay on norm weights), linear warmup \
        then cosine decay to zero, gradient clipping by global norm.

        --out receives model.safetensors + config.json (Hugging Face LlamaForCausalLM, F32), the optimizer state \
        (optimizer.safetensors, trainer_state.json) for --resume, metrics.jsonl (one JSON line per step, and per \
        evaluation) and loss.svg (training and eval loss by step). Memory: about 16 bytes per parameter plus the activations of one micro-batch. \
        The directory is a model for generate, chat and serve (tokenizer from the base model in trainer_state.json).

        A T5 directory (encoder-decoder) trains on pairs instead: {"prompt": ..., "response": ...} (its tokenizer.json; \
        the encoder reads the prompt + </s>, the decoder learns the response + </s>) or {"input_ids": [...], \
        "labels": [...]} (ids; -100 not scored); --out is then a Hugging Face T5ForConditionalGeneration directory \
        with the base model's tokenizer files (docs/training.md).
        """)

    @Option(name: .long, help: "The model to start from (a GGUF file or a LLaMA directory) and whose tokenizer and chat template format the data (default: SmolLM2-135M-Instruct).")
    var model: String?
    @Option(name: .long, help: "Training data (JSONL).") var data: String
    @Option(name: .long, help: "Evaluation data (JSONL), evaluated at the end and every --eval-every steps.") var evalData: String?
    @Option(name: .long, help: "Passes over the data (default 1 unless --steps).") var epochs: Int?
    @Option(name: .long, help: "Optimizer steps (instead of --epochs).") var steps: Int?
    @Option(name: .long, help: "Tokens per optimizer step (sum of sequence lengths).") var batchTokens: Int = 4096
    @Option(name: .long, help: "Tokens per forward/backward pass (gradient accumulation; default: --batch-tokens).") var microBatch: Int?
    @Option(name: .long, help: "Peak learning rate.") var lr: Double = 1e-5
    @Option(name: .long, help: "Warmup steps (linear from 0).") var warmup: Int = 0
    @Option(name: .long, help: "AdamW weight decay (matrices only).") var weightDecay: Double = 0
    @Option(name: .long, help: "Clip gradients to this global L2 norm (0: off).") var clip: Double = 1
    @Option(name: .long, help: "Seed of the data order (and with --init random, of the initial weights).") var seed: UInt64 = 0
    @Option(name: .customLong("init"), help: "pretrained: start from --model's weights; random: a new model of --config's architecture, initialised as transformers' LlamaForCausalLM (normal(0, initializer_range), norms 1), seeded by --seed; --model then gives only the tokenizer and chat template.") var initialization: InitArgument = .pretrained
    @Option(name: .long, help: "With --init random: a Hugging Face style config.json with the LLaMA architecture (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, rms_norm_eps, rope_theta, max_position_embeddings, tie_word_embeddings, initializer_range; vocab_size may be left out).") var config: String?
    @Option(name: .long, help: ArgumentHelp(AttentionArgument.help)) var attention: AttentionArgument = .causal
    @Flag(name: .long, help: "Score the prompt tokens too.") var trainOnPrompt = false
    @Option(name: .long, help: "Truncate examples to this many tokens (default: the model's context length).") var maxLength: Int?
    @Option(name: .long, help: "Output directory (checkpoint and metrics.jsonl).") var out: String
    @Option(name: .long, help: "Continue from a checkpoint directory written by a previous run (same data and options).") var resume: String?
    @Option(name: .long, help: "Also save a checkpoint every N steps.") var saveEvery: Int?
    @Option(name: .long, help: "Evaluate --eval-data every N steps.") var evalEvery: Int?
    @Option(name: .long, help: "Worker threads (default: all cores).") var threads: Int?
    @Option(name: .long, help: "cpu only: training runs on the CPU (the CUDA backend covers inference; cuda is an error; docs/cuda.md).") var device: DeviceArgument = .cpu
    @Option(name: .long, help: "Train a LoRA adapter of this rank instead of every weight: the base stays frozen (in its GGUF quantization: QLoRA), --out gets a PEFT adapter (adapter_config.json, adapter_model.safetensors).") var loraRank: Int?
    @Option(name: .long, help: "LoRA alpha (the update is scaled by alpha / rank; default: the rank).") var loraAlpha: Double?
    @Option(name: .long, help: "LoRA dropout on the adapters' input during training.") var loraDropout: Double = 0
    @Option(name: .long, help: "Linear layers that get adapters: any of q,k,v,o,gate,up,down (or q_proj ...), comma-separated.") var loraTargets: String = "q,k,v,o,gate,up,down"
    @Option(name: .long, help: "With --lora-rank: native keeps the base's weights in the file's types (QLoRA for a quantized GGUF); f32 dequantizes them to fp32 first (LoRA on an fp32 base, more memory).") var baseWeights: BaseWeights = .native
    @Flag(name: .long, help: "Keep only each block's input in the forward and recompute the block in the backward (less memory, about a third more compute).") var checkpointActivations = false
    @Option(name: .long, help: "lm: next-token prediction (decoder-only; T5: input/output pairs); mlm: masked-LM for a BERT directory (BERT's 80/10/10 masking, loss on the masked positions; --attention bidirectional or mixed; the default for a BERT directory). TrainMLM.swift, docs/training.md.") var objective: ObjectiveArgument?
    @Option(name: .long, help: "With --objective mlm: share of the (non-special) tokens that are masked and scored (default 0.15).") var maskRate: Double?
    @Option(name: .long, help: "With --objective mlm --attention mixed: head (half of every layer's heads read forward, half backward; default) or layer (even layers forward, odd layers backward).") var mixedBy: MixedByArgument?

    func validate() throws {
        if epochs != nil && steps != nil { throw ValidationError("give --epochs or --steps, not both") }
        if let e = epochs, e < 1 { throw ValidationError("--epochs must be at least 1") }
        if let s = steps, s < 1 { throw ValidationError("--steps must be at least 1") }
        if batchTokens < 1 { throw ValidationError("--batch-tokens must be at least 1") }
        if let m = microBatch, m < 1 { throw ValidationError("--micro-batch must be at least 1") }
        if !(lr > 0) { throw ValidationError("--lr must be positive") }
        if warmup < 0 { throw ValidationError("--warmup must not be negative") }
        if weightDecay < 0 { throw ValidationError("--weight-decay must not be negative") }
        if clip < 0 { throw ValidationError("--clip must not be negative") }
        if let m = maxLength, m < 2 { throw ValidationError("--max-length must be at least 2") }
        if let t = threads, t < 1 { throw ValidationError("--threads must be at least 1") }
        if device == .cuda { throw ValidationError("--device cuda: training runs on the CPU only (the CUDA backend covers inference: generate, chat, bench, serve); use --device cpu") }
        if let s = saveEvery, s < 1 { throw ValidationError("--save-every must be at least 1") }
        if let s = evalEvery, s < 1 { throw ValidationError("--eval-every must be at least 1") }
        if evalEvery != nil && evalData == nil { throw ValidationError("--eval-every needs --eval-data") }
        try validateObjective()
        if resolvedObjective == .lm { try attention.check(trainOnPrompt: trainOnPrompt) }
        if initialization == .random && config == nil { throw ValidationError("--init random needs --config FILE.json (the architecture)") }
        if initialization == .pretrained && config != nil { throw ValidationError("--config is for --init random (a pretrained model brings its own architecture)") }
        if let r = loraRank {
            if r < 1 { throw ValidationError("--lora-rank must be at least 1") }
            if initialization == .random { throw ValidationError("--lora-rank adapts a pretrained model; it cannot be combined with --init random") }
            if let a = loraAlpha, !(a > 0) { throw ValidationError("--lora-alpha must be positive") }
            if !(loraDropout >= 0 && loraDropout < 1) { throw ValidationError("--lora-dropout must be in [0, 1)") }
            _ = try Self.parseTargets(loraTargets)
        } else if loraAlpha != nil || loraDropout != 0 || loraTargets != "q,k,v,o,gate,up,down" || baseWeights != .native {
            throw ValidationError("--lora-alpha, --lora-dropout, --lora-targets and --base-weights need --lora-rank")
        }
    }

    static func parseTargets(_ s: String) throws -> [LoRATarget] {
        let names = s.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !names.isEmpty else { throw ValidationError("--lora-targets is empty") }
        return try names.map { n in
            guard let t = LoRATarget(name: n) else {
                throw ValidationError("--lora-targets: unknown module '\(n)' (use q, k, v, o, gate, up, down)")
            }
            return t
        }
    }

    var options: TrainingOptions {
        TrainingOptions(steps: steps, epochs: epochs, batchTokens: batchTokens, microBatch: microBatch, learningRate: lr,
                        warmupSteps: warmup, weightDecay: weightDecay, clip: clip, seed: seed, saveEvery: saveEvery,
                        evalEvery: evalEvery)
    }

    /// Prints the loop's progress on stderr.
    static func progressObserver(total: Int, start: Int, unit: String) -> (TrainingEvent) -> Void {
        let progress = Progress(total: total, start: start)
        return { event in
            switch event {
            case let .step(m):
                progress.update(step: m.step, loss: m.loss, lr: m.learningRate, scoredPerSecond: m.scoredTokensPerSecond, seconds: m.seconds)
            case let .evaluated(step, l):
                progress.finishLine()
                FileHandle.standardError.write(Data(String(format: "eval at step %d: loss %.4f, perplexity %.3f (%d scored %@)\n",
                                                           step, l.meanLoss, exp(l.meanLoss), l.scoredTokens, unit).utf8))
            case .saved: break
            }
        }
    }

    /// Peak resident memory of this process (Linux: VmHWM), in MiB.
    static func peakRSSMiB() -> Double? {
        guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
              let kb = Double(line.split(separator: " ").dropFirst().first ?? "") else { return nil }
        return kb / 1024
    }

    func run() throws {
        try reportingErrors {
            // An encoder-only model (BERT directory) trains as a masked-LM: TrainMLM.swift.
            if resolvedObjective == .mlm { return try runMLM() }
            // An encoder-decoder model (T5 directory) trains on (input, labels) pairs: TrainT5.swift.
            if let m = model, try ModelBundle.isEncoderDecoder(path: m) { return try runT5(modelDirectory: m) }
            try Self.checkWritableDirectory(out)
            let bundle = try ModelBundle(path: model, precision: loraRank != nil && baseWeights == .f32 ? .reference : .fast, threads: threads)
            // From scratch, the bundle gives only the tokenizer and chat template; otherwise its LLaMA weights too.
            let arch = try config.map { try LlamaArchitecture(path: $0, vocabularySize: bundle.tokenizer.vocabularySize) }
            let shape = try arch?.config ?? bundle.decoder.config
            let enc = try SFTEncoder(bundle: bundle, maxLength: maxLength ?? shape.contextLength, trainOnPrompt: trainOnPrompt)
            let train = try enc.load(path: data)
            reportSkipped(train, data)
            let evalSet = try evalData.map { p -> SFTDataset in let d = try enc.load(path: p); reportSkipped(d, p); return d }

            if let rank = loraRank {
                return try runLoRA(bundle: bundle, rank: rank, encoder: enc, train: train, evalSet: evalSet)
            }
            let params: LlamaParameters
            if resume != nil {
                params = try LlamaCheckpoint.load(directory: resume!)
                guard params.config == shape else {
                    throw CausalError.invalidArgument("\(resume!): the checkpoint's shape does not match \(config ?? bundle.path)")
                }
            } else if let arch {
                params = LlamaParameters(initializing: arch, seed: seed, paddingTokenID: try bundle.tokenizer.padTokenID)
            } else {
                params = LlamaParameters(model: try bundle.llama)
            }
            let pool = bundle.pool
            let trainer = DecoderTrainer(parameters: params, attention: attention.value, pool: pool)
            // As Hugging Face's LLaMA (nn.Embedding with padding_idx = pad_token_id).
            trainer.paddingTokenID = try bundle.tokenizer.padTokenID
            trainer.checkpointActivations = checkpointActivations
            let loop = makeLoop(trainer: trainer, trainable: params, train: train, evalSet: evalSet, pool: pool)
            if let resume { try loop.resume { try LlamaCheckpoint.loadState(directory: resume, into: $0) } }
            // The base model (absolute, so that eval and generate find its tokenizer from any directory).
            loop.info = ["base_model": URL(fileURLWithPath: bundle.path).standardizedFileURL.path, "attention": attention.rawValue]
            if let config, let arch {
                loop.info["init"] = "random"
                loop.info["architecture_config"] = URL(fileURLWithPath: config).standardizedFileURL.path
                loop.info["initializer_range"] = String(arch.initializerRange)
            }
            var extra: [String: Any] = [:]
            if let b = try bundle.tokenizer.bosTokenID { extra["bos_token_id"] = b }
            if let e = try bundle.tokenizer.eosTokenID { extra["eos_token_id"] = e }
            if let p = try bundle.tokenizer.padTokenID { extra["pad_token_id"] = p }
            loop.save = { [out] opt, state in try LlamaCheckpoint.save(params, optimizer: opt, state: state, to: out, extraConfig: extra) }
            FileHandle.standardError.write(Data(("causal train: \(train.examples.count) examples (\(train.scoredTokenCount) scored tokens), " +
                "\(loop.plan.count) steps\(loop.startStep > 0 ? ", resuming at step \(loop.startStep)" : ""), \(params.count) parameters\n").utf8))
            loop.observer = Self.progressObserver(total: loop.plan.count, start: loop.startStep, unit: "tokens")
            try loop.run()
            finish("saved \(out)/model.safetensors (step \(loop.optimizer.step))")
        }
    }

    func makeLoop(trainer: DecoderTrainer, trainable: any FlatParameters, train: SFTDataset, evalSet: SFTDataset?,
                  pool: DecoderTrainer.Pool) -> TrainingLoop<DecoderTrainer> {
        let loop = TrainingLoop(trainer: trainer, trainable: trainable, examples: train.examples, options: options,
                                directory: out, pool: pool, shuffled: { _, seed, epoch in train.shuffled(seed: seed, epoch: epoch) },
                                pack: SFTDataset.pack, tokenCount: { $0.tokens.count })
        loop.evalExamples = evalSet?.examples
        loop.plotTitle = "causal train: \(URL(fileURLWithPath: data).lastPathComponent)"
        return loop
    }

    /// LoRA / QLoRA: the base model frozen in its own weight types, the adapter trained and written in PEFT's format.
    func runLoRA(bundle: ModelBundle, rank: Int, encoder: SFTEncoder, train: SFTDataset, evalSet: SFTDataset?) throws {
        let base = try bundle.decoder
        let adapter: LoRAAdapter
        if let resume {
            adapter = try LoRAAdapter.load(directory: resume, model: base)
        } else {
            let cfg = LoRAConfig(rank: rank, alpha: loraAlpha, dropout: loraDropout, targets: try Self.parseTargets(loraTargets))
            adapter = try LoRAAdapter(config: cfg, model: base.config)
            adapter.initialize(seed: seed)
        }
        let trainer = try DecoderTrainer(base: base, adapter: adapter, attention: attention.value, pool: bundle.pool)
        trainer.checkpointActivations = checkpointActivations
        trainer.dropoutSeed = seed
        let loop = makeLoop(trainer: trainer, trainable: adapter, train: train, evalSet: evalSet, pool: bundle.pool)
        if let resume { try loop.resume { try LlamaCheckpoint.loadState(directory: resume, into: $0) } }
        let basePath = URL(fileURLWithPath: bundle.path).standardizedFileURL.path
        loop.info = ["base_model": basePath, "attention": attention.rawValue, "adapter": "lora"]
        loop.save = { [out] opt, state in try adapter.saveCheckpoint(optimizer: opt, state: state, to: out, baseModel: basePath) }
        let weights = bundle.model is DecoderModel ? "\(base.config.architecture) base frozen" : "base frozen"
        FileHandle.standardError.write(Data(("causal train: \(train.examples.count) examples (\(train.scoredTokenCount) scored tokens), " +
            "\(loop.plan.count) steps\(loop.startStep > 0 ? ", resuming at step \(loop.startStep)" : ""), LoRA rank \(adapter.config.rank) " +
            "alpha \(adapter.config.alpha) on \(adapter.config.targets.map(\.rawValue).joined(separator: ",")): \(adapter.count) trainable parameters (\(weights))\n").utf8))
        loop.observer = Self.progressObserver(total: loop.plan.count, start: loop.startStep, unit: "tokens")
        try loop.run()
        finish("saved \(out)/adapter_model.safetensors (step \(loop.optimizer.step))")
    }

    func finish(_ message: String) {
        var line = message
        if let rss = Self.peakRSSMiB() { line += String(format: ", peak RSS %.0f MiB", rss) }
        FileHandle.standardError.write(Data("\n\(line)\n".utf8))
    }

    /// Creates `dir` if needed and proves it writable with a probe file, before any work is done.
    static func checkWritableDirectory(_ dir: String) throws {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), !isDir.boolValue {
            throw CausalError.io(path: dir, reason: "--out exists and is not a directory")
        }
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        } catch {
            throw CausalError.io(path: dir, reason: "cannot create the --out directory (\((error as NSError).localizedDescription))")
        }
        let probe = dir + "/.causal-write-test-\(ProcessInfo.processInfo.processIdentifier)"
        guard FileManager.default.createFile(atPath: probe, contents: Data()) else {
            throw CausalError.io(path: dir, reason: "the --out directory is not writable")
        }
        try? FileManager.default.removeItem(atPath: probe)
    }

    func reportSkipped(_ d: SFTDataset, _ path: String) {
        guard !d.skipped.isEmpty else { return }
        let first = d.skipped.prefix(5).map { "line \($0.line)" }.joined(separator: ", ")
        FileHandle.standardError.write(Data("causal: \(path): skipped \(d.skipped.count) example(s) (\(first)\(d.skipped.count > 5 ? ", ..." : "")): \(d.skipped[0].reason)\n".utf8))
    }
}

enum BaseWeights: String, ExpressibleByArgument, CaseIterable {
    case native, f32
}

enum InitArgument: String, ExpressibleByArgument, CaseIterable {
    case pretrained, random
}

enum AttentionArgument: String, ExpressibleByArgument, CaseIterable {
    case causal, prefix, mixed, bidirectional
    var value: AttentionMask { AttentionMask(rawValue: rawValue)! }

    static let help = "causal; prefix (the prompt attends to itself bidirectionally); mixed (half the heads causal, half read the prompt right to left). bidirectional is refused: every token would see its target."

    /// Refuses masks that would let a scored token see its target.
    func check(trainOnPrompt: Bool) throws {
        if !value.isCausalOverResponse {
            throw ValidationError("--attention \(rawValue) lets every token see the token it is trained to predict; a causal language model cannot be trained or scored with it (use causal, prefix or mixed)")
        }
        if trainOnPrompt && value.readsPromptAhead {
            throw ValidationError("--train-on-prompt with --attention \(rawValue) would let prompt tokens see the tokens they predict")
        }
    }
}

/// The live progress line on stderr (rewritten in place on a terminal, one line per step otherwise).
final class Progress {
    let total: Int, start: Int
    let tty = isatty(2) != 0
    var elapsed = 0.0, done = 0
    var open = false
    init(total: Int, start: Int) { self.total = total; self.start = start }

    func update(step: Int, loss: Double, lr: Double, scoredPerSecond: Double, seconds: Double) {
        elapsed += seconds; done += 1
        let eta = elapsed / Double(done) * Double(total - step)
        let line = String(format: "step %d/%d  loss %.4f  lr %.2e  %.0f scored tok/s  ETA %@", step, total, loss, lr, scoredPerSecond, Self.duration(eta))
        FileHandle.standardError.write(Data((tty ? "\r\u{1B}[K" + line : line + "\n").utf8))
        open = tty
    }

    func finishLine() {
        if open { FileHandle.standardError.write(Data("\n".utf8)); open = false }
    }

    static func duration(_ s: Double) -> String {
        let t = Int(s.rounded())
        return t >= 3600 ? "\(t / 3600)h\(String(format: "%02d", t % 3600 / 60))m" : t >= 60 ? "\(t / 60)m\(String(format: "%02d", t % 60))s" : "\(t)s"
    }
}
