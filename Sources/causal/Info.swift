import ArgumentParser
import CausalLM
import Foundation

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Describe a model file: architecture, sizes, tensor types, tokenizer.")
    @OptionGroup var modelOptions: ModelOptions

    func run() throws {
        try reportingErrors {
            let path = try modelOptions.model ?? ModelFetcher.ensure()
            let gguf = try GGUFFile(path: path)
            let cfg = try LlamaConfig(gguf: gguf)
            let tok = try ByteLevelBPETokenizer(gguf: gguf)
            var types: [String: Int] = [:]
            var params = 0, bytes = 0
            for t in gguf.tensors { types[t.type.name, default: 0] += 1; params += t.elementCount; bytes += t.byteCount }
            let name = (try? gguf.string("general.name")) ?? "?"
            var lines = [
                "file: \(path)",
                "format: GGUF v\(gguf.version), \(gguf.tensors.count) tensors, \(gguf.metadata.count) metadata keys",
                "name: \(name)",
                "architecture: \(try gguf.string("general.architecture"))",
                "parameters: \(params) (\(String(format: "%.1f", Double(bytes) / 1048576)) MiB of tensor data)",
                "tensor types: " + types.sorted { $0.key < $1.key }.map { "\($0.key) ×\($0.value)" }.joined(separator: ", "),
                "layers: \(cfg.layerCount), hidden: \(cfg.hiddenSize), MLP: \(cfg.intermediateSize)",
                "heads: \(cfg.headCount) query, \(cfg.kvHeadCount) key/value, head size \(cfg.headDim)",
                "RoPE: theta \(cfg.ropeTheta), dims \(cfg.ropeDim); RMSNorm eps \(cfg.rmsNormEps)",
                "context length: \(cfg.contextLength)",
                "tokenizer: \((try? gguf.string("tokenizer.ggml.model")) ?? "?") (pre: \((try? gguf.string("tokenizer.ggml.pre")) ?? "?")), \(tok.vocabularySize) tokens",
            ]
            func idLine(_ label: String, _ id: Int?) -> String {
                guard let id else { return "\(label): none" }
                return "\(label): \(id) \(tok.tokenString(id).map { jsonString($0) } ?? "")"
            }
            lines.append(idLine("BOS", tok.bosTokenID))
            lines.append(idLine("EOS", tok.eosTokenID))
            lines.append(idLine("PAD", tok.padTokenID))
            lines.append("chat template: " + (gguf.has("tokenizer.chat_template") ? "yes" : "no"))
            writeOut(lines.joined(separator: "\n") + "\n")
        }
    }
}
