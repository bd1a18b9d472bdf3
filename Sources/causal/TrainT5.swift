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
        let opt = AdamW(parameters: params, weightDecay: weightDecay, pool: pool)
        var start = 0
        var order = seed
        if let resume {
            let state = try T5Checkpoint.loadState(directory: resume, into: opt)
            start = state.step
            order = state.seed
        }

        let plan = trainingPlan(steps: steps, epochs: epochs) { epoch in
            Seq2SeqDataset.pack(train.shuffled(seed: order, epoch: epoch), maxTokens: batchTokens)
        }
        guard start < plan.count else {
            throw CausalError.invalidArgument("the checkpoint is already at step \(start) of \(plan.count)")
        }
        let schedule = LearningRateSchedule(peak: lr, warmupSteps: warmup, totalSteps: plan.count)
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let metrics = try MetricsFile(path: out + "/metrics.jsonl")
        let progress = Progress(total: plan.count, start: start)
        FileHandle.standardError.write(Data(("causal train: \(train.examples.count) pairs (\(train.scoredLabelCount) scored labels), " +
            "\(plan.count) steps\(start > 0 ? ", resuming at step \(start)" : ""), \(params.count) parameters (T5 encoder-decoder)\n").utf8))

        let baseConfig = try T5Checkpoint.readConfigObject(directory: dir)
        let info = ["base_model": URL(fileURLWithPath: dir).standardizedFileURL.path, "architecture": "t5"]
        func save() throws {
            try T5Checkpoint.copyTokenizerFiles(from: dir, to: out)
            try T5Checkpoint.save(params, optimizer: opt, state: TrainingState(step: opt.step, totalSteps: plan.count, seed: order, info: info),
                                  to: out, baseConfig: baseConfig)
        }
        func evaluate(_ step: Int) throws {
            guard let evalSet else { return }
            let l = try trainer.evaluate(evalSet.examples, maxBatchTokens: microBatch ?? batchTokens)
            progress.finishLine()
            FileHandle.standardError.write(Data(String(format: "eval at step %d: loss %.4f, perplexity %.3f (%d scored labels)\n",
                                                       step, l.meanLoss, exp(l.meanLoss), l.scoredTokens).utf8))
            metrics.write(#"{"step": \#(step), "eval_loss": \#(l.meanLoss), "eval_perplexity": \#(exp(l.meanLoss)), "eval_scored_tokens": \#(l.scoredTokens)}"#)
        }
        func plot() throws {
            try LossPlot.write(metricsPath: out + "/metrics.jsonl", to: out + "/loss.svg", title: "causal train: \(URL(fileURLWithPath: data).lastPathComponent)")
        }

        for step in start..<plan.count {
            let t0 = Date()
            let (ep, batch) = plan[step]
            trainer.zeroGradients()
            let loss = try trainer.accumulate(Seq2SeqDataset.pack(batch, maxTokens: microBatch ?? batchTokens))
            let norm = clip > 0 ? clipGradients(trainer.gradients, maxNorm: clip) : trainer.gradientNorm()
            let rate = schedule.lr(at: step)
            opt.update(params, gradients: trainer.gradients, lr: rate)
            let dt = Date().timeIntervalSince(t0)
            let tokens = batch.reduce(0) { $0 + $1.tokenCount }
            metrics.write(#"{"step": \#(step + 1), "epoch": \#(ep), "loss": \#(loss.meanLoss), "lr": \#(rate), "grad_norm": \#(norm), "#
                + #""scored_tokens": \#(loss.scoredTokens), "tokens": \#(tokens), "sequences": \#(batch.count), "seconds": \#(dt), "#
                + #""scored_tokens_per_second": \#(Double(loss.scoredTokens) / dt)}"#)
            progress.update(step: step + 1, loss: loss.meanLoss, lr: rate, scoredPerSecond: Double(loss.scoredTokens) / dt, seconds: dt)
            if let s = saveEvery, (step + 1) % s == 0, step + 1 < plan.count { try save(); try plot() }
            if let e = evalEvery, (step + 1) % e == 0, step + 1 < plan.count { try evaluate(step + 1); try plot() }
        }
        progress.finishLine()
        try save()
        try evaluate(plan.count)
        try plot()
        FileHandle.standardError.write(Data("saved \(out)/model.safetensors (step \(opt.step))\n".utf8))
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
