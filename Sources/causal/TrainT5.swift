import CausalLM
import Foundation

// `causal train` and `causal eval` for an encoder-decoder model (T5): the data are (input, labels) pairs, the input
// goes to the encoder and the decoder is trained on the labels (Seq2SeqEncoder, T5Trainer). The step plan, AdamW,
// the schedule, clipping, metrics.jsonl, loss.svg and --resume work as for LLaMA models; the checkpoint is a Hugging
// Face T5ForConditionalGeneration directory (T5Checkpoint) with the base model's tokenizer files copied in.

extension Train {
    /// Options that only mean something for a decoder-only model.
    static func checkSeq2SeqOptions(attention: AttentionArgument, trainOnPrompt: Bool) throws {
        if attention != .causal {
            throw CausalError.invalidArgument("--attention applies to decoder-only models; a T5 encoder attends bidirectionally over the input and its decoder causally over the labels")
        }
        if trainOnPrompt {
            throw CausalError.invalidArgument("--train-on-prompt applies to decoder-only models; a T5 decoder reads only the labels (the prompt goes to the encoder)")
        }
    }

    func runT5(modelDirectory dir: String) throws {
        try Self.checkSeq2SeqOptions(attention: attention, trainOnPrompt: trainOnPrompt)
        if loraRank != nil {
            throw CausalError.invalidArgument("--lora-rank trains decoder-only models (LLaMA, Qwen, Gemma ...); LoRA for T5 is not implemented yet")
        }
        try Self.checkWritableDirectory(out)
        let bundle = try ModelBundle(path: dir, precision: .fast, threads: threads)
        guard let t5 = bundle.model as? T5Model else {
            throw CausalError.invalidArgument("\(dir): not an encoder-decoder model")
        }
        let enc = try Seq2SeqEncoder(bundle: bundle, maxLength: maxLength)
        let train = try enc.load(path: data)
        Self.reportSkipped(train, data)
        let evalSet = try evalData.map { p -> Seq2SeqDataset in let d = try enc.load(path: p); Self.reportSkipped(d, p); return d }

        let params: T5Parameters
        if let resume {
            params = try T5Checkpoint.load(directory: resume)
            guard params.config == t5.config else {
                throw CausalError.invalidArgument("\(resume): the checkpoint's shape does not match \(dir)")
            }
        } else {
            params = T5Parameters(model: t5)
        }
        let pool = bundle.pool
        let trainer = T5Trainer(parameters: params, pool: pool)
        let loop = TrainingLoop(trainer: trainer, trainable: params, examples: train.examples, options: options, directory: out,
                                pool: pool, shuffled: { _, seed, epoch in train.shuffled(seed: seed, epoch: epoch) },
                                pack: Seq2SeqDataset.pack, tokenCount: { $0.tokenCount })
        loop.evalExamples = evalSet?.examples
        loop.plotTitle = "causal train: \(URL(fileURLWithPath: data).lastPathComponent)"
        if let resume { try loop.resume { try T5Checkpoint.loadState(directory: resume, into: $0) } }
        let baseConfig = try T5Checkpoint.readConfigObject(directory: dir)
        loop.info = ["base_model": URL(fileURLWithPath: dir).standardizedFileURL.path, "architecture": "t5"]
        loop.save = { [out] opt, state in
            try T5Checkpoint.copyTokenizerFiles(from: dir, to: out)
            try T5Checkpoint.save(params, optimizer: opt, state: state, to: out, baseConfig: baseConfig)
        }
        FileHandle.standardError.write(Data(("causal train: \(train.examples.count) pairs (\(train.scoredLabelCount) scored labels), " +
            "\(loop.plan.count) steps\(loop.startStep > 0 ? ", resuming at step \(loop.startStep)" : ""), \(params.count) parameters (T5 encoder-decoder)\n").utf8))
        loop.observer = Self.progressObserver(total: loop.plan.count, start: loop.startStep, unit: "labels")
        try loop.run()
        finish("saved \(out)/model.safetensors (step \(loop.optimizer.step))")
    }

    static func reportSkipped(_ d: Seq2SeqDataset, _ path: String) {
        guard !d.skipped.isEmpty else { return }
        let first = d.skipped.prefix(5).map { "line \($0.line)" }.joined(separator: ", ")
        FileHandle.standardError.write(Data("causal: \(path): skipped \(d.skipped.count) example(s) (\(first)\(d.skipped.count > 5 ? ", ..." : "")): \(d.skipped[0].reason)\n".utf8))
    }
}

extension Eval {
    func runT5(modelDirectory dir: String) throws {
        try Train.checkSeq2SeqOptions(attention: attention, trainOnPrompt: trainOnPrompt)
        if tokenizer != nil {
            throw CausalError.invalidArgument("--tokenizer is for LLaMA checkpoints; a T5 directory reads text with its own tokenizer.json (causal train copies it into checkpoints)")
        }
        let bundle = try ModelBundle(path: dir, precision: .fast, threads: threads)
        guard let t5 = bundle.model as? T5Model else { throw CausalError.invalidArgument("\(dir): not an encoder-decoder model") }
        let ds = try Seq2SeqEncoder(bundle: bundle, maxLength: maxLength).load(path: data)
        Train.reportSkipped(ds, data)
        let trainer = T5Trainer(parameters: T5Parameters(model: t5), pool: bundle.pool)
        let l = try trainer.evaluate(ds.examples, maxBatchTokens: batchTokens)
        if json {
            writeOut(#"{"loss": \#(l.meanLoss), "perplexity": \#(exp(l.meanLoss)), "scored_tokens": \#(l.scoredTokens), "examples": \#(ds.examples.count), "skipped": \#(ds.skipped.count)}"# + "\n")
        } else {
            writeOut(String(format: "loss %.6f  perplexity %.4f  (%d scored labels, %d pairs)\n", l.meanLoss, exp(l.meanLoss), l.scoredTokens, ds.examples.count))
        }
    }
}
