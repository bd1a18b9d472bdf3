import ArgumentParser
import CausalLM
import Foundation

struct Embed: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compute sentence embeddings with an encoder model (BERT / sentence-transformers).",
        discussion: """
        Each text is embedded on its own (mean of the last hidden states, L2-normalised for all-MiniLM-L6-v2); \
        all texts run as one ragged batch, which gives the same numbers as one at a time. Without --json, one line \
        per text: its index, the norm and the first values.
        """)

    @Option(name: .long, help: "A model directory (config.json, model.safetensors, tokenizer.json); default: all-MiniLM-L6-v2, fetched into the cache if missing.")
    var model: String?

    @Option(name: .long, help: "Worker threads (default: all cores).")
    var threads: Int?

    @Flag(name: .long, help: #"Print one JSON object: {"embeddings": [[...], ...], "model", "dimensions"}."#)
    var json = false

    @Argument(help: "The texts.") var texts: [String] = []

    func validate() throws {
        if texts.isEmpty { throw ValidationError("give at least one TEXT") }
        if let t = threads, t < 1 { throw ValidationError("--threads must be at least 1") }
    }

    func run() throws {
        try reportingErrors {
            let m = try EmbeddingModel(directory: model, threads: threads)
            let embeddings = try m.embed(texts)
            if json {
                let rows = embeddings.map { "[" + $0.map { "\($0)" }.joined(separator: ", ") + "]" }
                writeOut(#"{"embeddings": ["# + rows.joined(separator: ", ") + #"], "model": "# + jsonString(m.name)
                         + #", "dimensions": \#(m.dimensions)}"# + "\n")
            } else {
                var out = ""
                for (i, e) in embeddings.enumerated() {
                    let norm = e.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
                    let head = e.prefix(6).map { String(format: "%+.5f", $0) }.joined(separator: " ")
                    out += "\(i)\tnorm \(String(format: "%.6f", norm))\t[\(head) ...] (\(e.count))\t\(jsonString(texts[i]))\n"
                }
                writeOut(out)
            }
        }
    }
}
