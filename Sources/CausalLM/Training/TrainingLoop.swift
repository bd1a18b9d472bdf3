import Foundation
import CausalKernels

// The one training loop, for every trainer (decoder full fine-tuning, LoRA/QLoRA, T5): the step plan over shuffled
// epochs, ragged micro-batches with gradient accumulation, clipping by global norm, AdamW under a warmup + cosine
// schedule, evaluation every N steps and at the end, checkpoints every N steps and at the end, metrics.jsonl and
// loss.svg, and resuming from a checkpoint's step. `causal train` only parses options and prints progress.

/// What the loop needs from a trainer.
public protocol StepTrainer: AnyObject {
    associatedtype Example
    /// The gradients `accumulate` adds to (what clipping and the optimizer read).
    var flatGradients: any FlatParameters { get }
    func zeroGradients()
    /// Forward and backward over micro-batches; the gradient is that of the mean loss over all their scored tokens.
    func accumulate(_ microBatches: [[Example]]) throws -> BatchLoss
    /// The loss over examples, forward only.
    func evaluate(_ examples: [Example], maxBatchTokens: Int) throws -> BatchLoss
    /// Called before optimizer step `step` (0-based): what a trainer draws at random in a step (dropout masks)
    /// depends on the step, so a resumed run draws what the uninterrupted run drew.
    func startStep(_ step: Int)
}

extension StepTrainer {
    public func startStep(_ step: Int) {}
}

extension DecoderTrainer: StepTrainer {
    public var flatGradients: any FlatParameters { gradients }
}

extension T5Trainer: StepTrainer {
    public var flatGradients: any FlatParameters { gradients }
}

/// The hyper-parameters of a run.
public struct TrainingOptions: Sendable, Equatable {
    public var steps: Int?
    public var epochs: Int?
    /// Tokens per optimizer step; `microBatch` tokens per forward/backward (default: the same).
    public var batchTokens: Int
    public var microBatch: Int?
    public var learningRate: Double
    public var warmupSteps: Int
    public var weightDecay: Double
    /// Clip the gradient to this global L2 norm (0: off).
    public var clip: Double
    /// Seed of the data order.
    public var seed: UInt64
    public var saveEvery: Int?
    public var evalEvery: Int?

    public init(steps: Int? = nil, epochs: Int? = nil, batchTokens: Int = 4096, microBatch: Int? = nil,
                learningRate: Double = 1e-5, warmupSteps: Int = 0, weightDecay: Double = 0, clip: Double = 1,
                seed: UInt64 = 0, saveEvery: Int? = nil, evalEvery: Int? = nil) {
        self.steps = steps; self.epochs = epochs; self.batchTokens = batchTokens; self.microBatch = microBatch
        self.learningRate = learningRate; self.warmupSteps = warmupSteps; self.weightDecay = weightDecay
        self.clip = clip; self.seed = seed; self.saveEvery = saveEvery; self.evalEvery = evalEvery
    }
}

/// One optimizer step's numbers (one line of metrics.jsonl).
public struct StepMetrics: Sendable {
    public var step: Int, totalSteps: Int, epoch: Int
    public var loss: Double, learningRate: Double, gradientNorm: Double
    public var scoredTokens: Int, tokens: Int, sequences: Int
    public var seconds: Double
    public var scoredTokensPerSecond: Double { Double(scoredTokens) / max(seconds, 1e-9) }
}

/// What the loop reports as it goes.
public enum TrainingEvent {
    case step(StepMetrics)
    case evaluated(step: Int, loss: BatchLoss)
    case saved(step: Int)
}

public final class TrainingLoop<Trainer: StepTrainer> {
    public let trainer: Trainer
    /// The values the optimizer updates (the trainer's parameters or adapter).
    public let trainable: any FlatParameters
    public let options: TrainingOptions
    public let optimizer: AdamW
    public private(set) var plan: [(epoch: Int, batch: [Trainer.Example])]
    public private(set) var schedule: LearningRateSchedule
    /// Where metrics.jsonl and loss.svg go (and the checkpoint, written by `save`).
    public let directory: String
    /// The first step to run (0, or the checkpoint's step when resuming).
    public private(set) var startStep = 0
    /// Examples to evaluate on (every `evalEvery` steps and at the end).
    public var evalExamples: [Trainer.Example]?
    /// Writes a checkpoint of the run into `directory` (the loop calls it every `saveEvery` steps and at the end).
    public var save: (_ optimizer: AdamW, _ state: TrainingState) throws -> Void = { _, _ in }
    /// Called after every step, evaluation and save.
    public var observer: (TrainingEvent) -> Void = { _ in }
    /// Facts about the run written into trainer_state.json.
    public var info: [String: String] = [:]
    /// Title of loss.svg.
    public var plotTitle = "causal train"
    private let pack: ([Trainer.Example], Int) -> [[Trainer.Example]]
    private let tokenCount: (Trainer.Example) -> Int
    private var seed: UInt64
    private let makePlan: (UInt64) -> [(epoch: Int, batch: [Trainer.Example])]

    /// A run over `examples`: `shuffled(examples, seed, epoch)` orders an epoch, `pack(examples, maxTokens)` cuts
    /// ragged batches, `tokenCount` counts an example's tokens (for the metrics).
    public init(trainer: Trainer, trainable: any FlatParameters, examples: [Trainer.Example], options: TrainingOptions,
                directory: String, pool: ThreadPool = .shared,
                shuffled: @escaping ([Trainer.Example], UInt64, Int) -> [Trainer.Example],
                pack: @escaping ([Trainer.Example], Int) -> [[Trainer.Example]],
                tokenCount: @escaping (Trainer.Example) -> Int) {
        self.trainer = trainer; self.trainable = trainable; self.options = options; self.directory = directory
        self.pack = pack; self.tokenCount = tokenCount
        self.seed = options.seed
        optimizer = AdamW(parameters: trainable, weightDecay: options.weightDecay, pool: pool)
        makePlan = { seed in
            trainingPlan(steps: options.steps, epochs: options.epochs) { epoch in
                pack(shuffled(examples, seed, epoch), options.batchTokens)
            }
        }
        plan = makePlan(options.seed)
        schedule = LearningRateSchedule(peak: options.learningRate, warmupSteps: options.warmupSteps, totalSteps: plan.count)
    }

    /// Continues from a checkpoint: its optimizer moments, step and data seed (`loadState` reads them into the
    /// optimizer and returns the run's state); the data order is the checkpoint's.
    public func resume(_ loadState: (AdamW) throws -> TrainingState) throws {
        let state = try loadState(optimizer)
        if state.seed != seed {
            seed = state.seed
            plan = makePlan(seed)
            schedule = LearningRateSchedule(peak: options.learningRate, warmupSteps: options.warmupSteps, totalSteps: plan.count)
        }
        guard state.step < plan.count else {
            throw CausalError.invalidArgument("the checkpoint is already at step \(state.step) of \(plan.count)")
        }
        startStep = state.step
    }

    public var state: TrainingState { TrainingState(step: optimizer.step, totalSteps: plan.count, seed: seed, info: info) }

    /// Runs the remaining steps, evaluating and saving as the options say, then saves and evaluates at the end.
    public func run() throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let metrics = try MetricsWriter(path: directory + "/metrics.jsonl")
        let micro = options.microBatch ?? options.batchTokens
        func evaluate(_ step: Int) throws {
            guard let evalExamples else { return }
            let l = try trainer.evaluate(evalExamples, maxBatchTokens: micro)
            metrics.write(#"{"step": \#(step), "eval_loss": \#(l.meanLoss), "eval_perplexity": \#(exp(l.meanLoss)), "eval_scored_tokens": \#(l.scoredTokens)}"#)
            observer(.evaluated(step: step, loss: l))
        }
        func checkpoint() throws {
            try save(optimizer, state)
            observer(.saved(step: optimizer.step))
        }
        func plot() throws { try LossPlot.write(metricsPath: directory + "/metrics.jsonl", to: directory + "/loss.svg", title: plotTitle) }

        for step in startStep..<plan.count {
            let t0 = Date()
            let (epoch, batch) = plan[step]
            trainer.zeroGradients()
            trainer.startStep(step)
            let loss = try trainer.accumulate(pack(batch, micro))
            let grads = trainer.flatGradients
            let norm = options.clip > 0 ? clipGradients(grads, maxNorm: options.clip) : grads.norm()
            let rate = schedule.lr(at: step)
            optimizer.update(trainable, gradients: grads, lr: rate)
            let m = StepMetrics(step: step + 1, totalSteps: plan.count, epoch: epoch, loss: loss.meanLoss, learningRate: rate,
                                gradientNorm: norm, scoredTokens: loss.scoredTokens, tokens: batch.reduce(0) { $0 + tokenCount($1) },
                                sequences: batch.count, seconds: Date().timeIntervalSince(t0))
            metrics.write(#"{"step": \#(m.step), "epoch": \#(m.epoch), "loss": \#(m.loss), "lr": \#(m.learningRate), "grad_norm": \#(m.gradientNorm), "#
                + #""scored_tokens": \#(m.scoredTokens), "tokens": \#(m.tokens), "sequences": \#(m.sequences), "seconds": \#(m.seconds), "#
                + #""scored_tokens_per_second": \#(m.scoredTokensPerSecond)}"#)
            observer(.step(m))
            if let s = options.saveEvery, (step + 1) % s == 0, step + 1 < plan.count { try checkpoint(); try plot() }
            if let e = options.evalEvery, (step + 1) % e == 0, step + 1 < plan.count { try evaluate(step + 1); try plot() }
        }
        try checkpoint()
        try evaluate(plan.count)
        try plot()
    }
}

/// metrics.jsonl, appended line by line.
final class MetricsWriter {
    let handle: FileHandle
    init(path: String) throws {
        if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        guard let h = FileHandle(forWritingAtPath: path) else { throw CausalError.io(path: path, reason: "cannot open for writing") }
        h.seekToEndOfFile()
        handle = h
    }
    func write(_ line: String) { handle.write(Data((line + "\n").utf8)) }
    deinit { try? handle.close() }
}

extension LoRAAdapter {
    /// A LoRA training checkpoint in `directory`: the adapter in PEFT's format, then the optimizer state and
    /// trainer_state.json (the commit point), each written atomically.
    public func saveCheckpoint(optimizer: AdamW, state: TrainingState, to directory: String, baseModel: String?) throws {
        try write(to: directory, baseModel: baseModel)
        try LlamaCheckpoint.saveOptimizerState(optimizer, state: state, layout: "lora", to: directory)
    }
}

extension DecoderTrainer {
    /// The thread pool type (so that callers need not import CausalKernels).
    public typealias Pool = ThreadPool
}
