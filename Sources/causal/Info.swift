import ArgumentParser
import CausalLM
import Foundation

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Describe a model file or directory: architecture, sizes, tensor types, tokenizer.")
    @OptionGroup var modelOptions: ModelOptions

    func run() throws {
        try reportingErrors {
            let path = try modelOptions.model.map { try ModelRegistry.resolve($0) } ?? ModelFetcher.ensure()
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue {
                return try describeDirectory(path)
            }
            let gguf = try GGUFFile(path: path)
            let cfg = try DecoderConfig(gguf: gguf)
            let tok = try makeTokenizer(gguf: gguf)
            let eog = try endOfGenerationIDs(gguf: gguf)
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
                "decoder options: \(cfg.features)",
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
            lines.append("end of generation: " + eog.sorted().map { id in "\(id) \(tok.tokenString(id).map { jsonString($0) } ?? "")" }.joined(separator: ", "))
            lines.append("chat template: " + (gguf.has("tokenizer.chat_template") ? "yes" : "no"))
            writeOut(lines.joined(separator: "\n") + "\n")
        }
    }

    /// A Hugging Face model directory: config, tensors and tokenizer.
    func describeDirectory(_ path: String) throws {
        let bundle = try ModelBundle(path: path, precision: .fast, threads: modelOptions.threads)
        let checkpoint = try SafetensorsCheckpoint(path: path)
        var types: [String: Int] = [:]
        var params = 0, bytes = 0
        for name in checkpoint.tensorNames {
            let t = try checkpoint.tensor(name).tensor
            types[t.dtype.rawValue, default: 0] += 1; params += t.elementCount; bytes += t.byteCount
        }
        var lines = [
            "directory: \(path)",
            "format: Hugging Face safetensors, \(checkpoint.files.count) file(s), \(checkpoint.tensorNames.count) tensors",
            "parameters: \(params) (\(String(format: "%.1f", Double(bytes) / 1048576)) MiB of tensor data)",
            "tensor types: " + types.sorted { $0.key < $1.key }.map { "\($0.key) ×\($0.value)" }.joined(separator: ", "),
        ]
        if let m = bundle.model as? LlamaModel {
            let c = m.config
            lines += ["architecture: \(c.architecture)",
                      "layers: \(c.layerCount), hidden: \(c.hiddenSize), MLP: \(c.intermediateSize)",
                      "heads: \(c.headCount) query, \(c.kvHeadCount) key/value, head size \(c.headDim)",
                      "RoPE: theta \(c.ropeTheta), dims \(c.ropeDim); RMSNorm eps \(c.rmsNormEps)",
                      "decoder options: \(c.features)"]
        } else if let m = bundle.model as? GPT2Model {
            let c = m.config
            lines += ["architecture: gpt2",
                      "layers: \(c.layerCount), hidden: \(c.hiddenSize), MLP: \(c.intermediateSize)",
                      "heads: \(c.headCount), head size \(c.headDim); learned positions; LayerNorm eps \(c.layerNormEps)"]
        } else if let m = bundle.model as? T5Model {
            let c = m.config
            lines += ["architecture: t5 (encoder-decoder; generation returns only decoder output)",
                      "layers: \(c.encoderLayerCount) encoder, \(c.decoderLayerCount) decoder; hidden: \(c.modelDim), feed-forward: \(c.feedForwardDim) (\(c.feedForward.rawValue))",
                      "heads: \(c.headCount), head size \(c.headDim); relative position buckets \(c.relativeBuckets) (max distance \(c.relativeMaxDistance)); LayerNorm eps \(c.layerNormEps)",
                      "decoder start: \(c.decoderStartTokenID)"]
        }
        lines.append("vocabulary: \(bundle.model.vocabularySize), context length: \(bundle.model.contextLength)")
        if let tok = bundle.textTokenizer as? ByteLevelBPETokenizer {
            lines.append("tokenizer: tokenizer.json, byte-level BPE (pre: \(tok.preTokenizerName)), \(tok.vocabularySize) tokens")
        } else if let tok = bundle.textTokenizer as? UnigramTokenizer {
            lines.append("tokenizer: tokenizer.json, SentencePiece Unigram\(tok.config.byteFallback ? " with byte fallback" : ""), \(tok.vocabularySize) tokens")
        } else if let tok = bundle.textTokenizer {
            lines.append("tokenizer: tokenizer.json, \(tok.vocabularySize) tokens")
        } else {
            lines.append(bundle.isEncoderDecoder ? "tokenizer: none (token ids only)" : "tokenizer: none (no tokenizer.json: token ids only)")
        }
        lines.append("end tokens: " + (bundle.endTokenIDs.isEmpty ? "none" : bundle.endTokenIDs.sorted().map(String.init).joined(separator: ", ")))
        lines.append("PAD: " + (bundle.padTokenID.map(String.init) ?? "none"))
        lines.append("chat template: " + (bundle.chatTemplate != nil ? "yes" : "no"))
        writeOut(lines.joined(separator: "\n") + "\n")
    }
}
