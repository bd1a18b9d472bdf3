import ArgumentParser
import CausalLM
import Foundation

struct Analyze: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Analyse what a model computes on a text.",
        subcommands: [AnalyzeAttention.self])
}

enum AnalyzeAttentionArgument: String, ExpressibleByArgument, CaseIterable {
    case causal, prefix, mixed, bidirectional
    case mixedByLayer = "mixed-by-layer"
    var value: AttentionChoice { AttentionChoice(rawValue: rawValue)! }
}

struct AnalyzeAttention: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attention",
        abstract: "Every layer's and head's softmax attention matrix on a text: numerical rank, singular values, entropy, diagonal mass.",
        discussion: """
        Runs the text once through the model's forward (a decoder: GGUF file or Hugging Face directory; or a BERT \
        directory, e.g. all-MiniLM-L6-v2) and writes DIR/attention.json and one heat map per head, DIR/L{layer}H{head}.svg; \
        prints a per-layer table. Rank: singular values (one-sided Jacobi, float64) above sigma_max * T * eps, eps = \
        float32's 1.19e-7 (numpy matrix_rank's rule for the float32 matrices the forward computes), or above --threshold. \
        See docs/analyze.md.
        """)

    @OptionGroup var modelOptions: ModelOptions

    @Option(name: .long, help: "The text to analyse.")
    var text: String

    @Option(name: .long, help: "Directory for attention.json and the SVG heat maps (created if missing).")
    var out: String = "attention-analysis"

    @Option(name: .long, help: "Count singular values above this absolute value as the rank (default: sigma_max * T * 1.19e-7).")
    var threshold: Double?

    @Option(name: .long, help: "How the heads attend: the model's own by default; decoders: causal, prefix (bidirectional over the text), mixed (half the heads backward); BERT: bidirectional, mixed, mixed-by-layer.")
    var attention: AnalyzeAttentionArgument?

    @Flag(name: .long, help: "Include every head's T × T probabilities in attention.json.")
    var matrices = false

    func validate() throws {
        if text.isEmpty { throw ValidationError("--text is empty: give the text to analyse") }
        if let t = threshold, !(t >= 0 && t.isFinite) { throw ValidationError("--threshold must be a non-negative number, found \(t)") }
    }

    func run() throws {
        try reportingErrors {
            if let a = modelOptions.activations { Activations.current = a.value }
            if let k = modelOptions.kvCache { KVPrecision.current = k.value }
            let report = try AttentionAnalysis.analyze(model: modelOptions.model, text: text, attention: attention?.value,
                                                       threshold: threshold.map { .absolute($0) } ?? .float32,
                                                       precision: modelOptions.precision.value, threads: modelOptions.threads)
            let written = try report.write(to: out, matrices: matrices)
            writeOut(report.summaryTable() + "wrote \(written.count) files to \(out) (attention.json, L{layer}H{head}.svg)\n")
        }
    }
}
