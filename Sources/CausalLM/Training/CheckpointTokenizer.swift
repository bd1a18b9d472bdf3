import Foundation

// A checkpoint written by `causal train` holds the weights (model.safetensors + config.json) but no tokenizer: it
// records the model it was trained from (`base_model` in trainer_state.json), whose tokenizer and chat template it
// keeps. Loading the directory as a model (`ModelBundle`, so `causal generate --model run/`) takes them from there.

extension LlamaCheckpoint {
    /// The model whose tokenizer and chat template a `causal train` checkpoint uses: `base_model` of its
    /// trainer_state.json, followed through checkpoints trained from checkpoints to the first GGUF file or directory
    /// with a tokenizer.json. nil when `directory` has no trainer_state.json or it records no base model.
    /// The attention mask a checkpoint was trained with (`attention` in its trainer_state.json): causal when absent.
    /// Bidirectional is refused (an LM trained with it has seen its targets); errors name the file and field.
    public static func promptAttention(ofCheckpoint directory: String) throws -> AttentionMask {
        let statePath = URL(fileURLWithPath: directory).appendingPathComponent("trainer_state.json").path
        guard FileManager.default.fileExists(atPath: statePath) else { return .causal }
        let state = try HFJSON.parse(contentsOf: statePath)
        guard let v = state["attention"], !v.isNull else { return .causal }
        guard let s = v.stringValue, let mask = AttentionMask(rawValue: s), mask != .bidirectional else {
            throw CausalError.badFormat(path: statePath, field: "attention", reason: "expected causal, prefix or mixed, found \(v.brief)")
        }
        return mask
    }

    public static func tokenizerSource(ofCheckpoint directory: String) throws -> String? {
        var dir = directory
        var visited: [String] = []
        while true {
            let statePath = URL(fileURLWithPath: dir).appendingPathComponent("trainer_state.json").path
            guard FileManager.default.fileExists(atPath: statePath) else { return visited.isEmpty ? nil : dir }
            let state = try HFJSON.parse(contentsOf: statePath)
            guard let base = state["base_model"], !base.isNull else { return visited.isEmpty ? nil : dir }
            guard let path = base.stringValue else {
                throw CausalError.badFormat(path: statePath, field: "base_model", reason: "expected a string, found \(base.typeName)")
            }
            // A relative path is relative to the directory that was current at training time; try the checkpoint's.
            var resolved = path
            if !path.hasPrefix("/"), !FileManager.default.fileExists(atPath: path) {
                resolved = URL(fileURLWithPath: dir).appendingPathComponent(path).path
            }
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: resolved, isDirectory: &isDir) else {
                throw CausalError.io(path: statePath, reason: "base_model '\(path)' (the model whose tokenizer this checkpoint uses) does not exist")
            }
            let key = URL(fileURLWithPath: resolved).standardizedFileURL.path
            visited.append(URL(fileURLWithPath: dir).standardizedFileURL.path)
            if !isDir.boolValue || FileManager.default.fileExists(atPath: resolved + "/tokenizer.json") { return resolved }
            guard !visited.contains(key), visited.count < 16 else {
                throw CausalError.badFormat(path: statePath, field: "base_model", reason: "the chain of base models loops or is too long")
            }
            dir = resolved
        }
    }
}
