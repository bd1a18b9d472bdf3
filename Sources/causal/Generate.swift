import ArgumentParser
import CausalLM
import Foundation

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate a continuation. Prints only the new text (or, with --json, the new tokens).")

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var sampling: SamplingOptions

    @Flag(name: .long, help: "Treat the prompt as plain text instead of a user message in the chat template.")
    var raw = false

    @Option(name: .long, help: "A system message (chat template only).")
    var system: String?

    @Flag(name: .long, help: #"Print one JSON object: {"tokens", "text", "finish_reason", "prompt_tokens"}."#)
    var json = false

    @Flag(name: .long, help: "Print timing (prompt and generation tokens/s) on stderr.")
    var stats = false

    @Argument(help: "The prompt.") var prompt: String

    func validate() throws {
        if raw && system != nil { throw ValidationError("--system needs the chat template; it cannot be used with --raw") }
    }

    func run() throws {
        try reportingErrors {
            let bundle = try modelOptions.load()
            let ids: [Int]
            if raw {
                ids = bundle.tokenizer.encode(prompt)
            } else {
                var messages: [ChatMessage] = []
                if let s = system { messages.append(ChatMessage(role: "system", content: s)) }
                messages.append(ChatMessage(role: "user", content: prompt))
                ids = try bundle.chatPromptIDs(messages)
            }
            let generator = bundle.makeGenerator()
            let request = SequenceRequest(prompt: ids, parameters: sampling.parameters)
            if json {
                let r = try generator.generate([request])[0]
                writeOut(#"{"tokens": [\#(r.tokens.map(String.init).joined(separator: ", "))], "text": \#(jsonString(r.text)), "finish_reason": "\#(r.finishReason.rawValue)", "prompt_tokens": \#(r.promptTokens)}"# + "\n")
            } else {
                _ = try generator.generate([request], onText: { _, s in writeOut(s) })
                writeOut("\n")
            }
            if stats {
                let s = generator.lastStats
                FileHandle.standardError.write(String(
                    format: "prompt: %d tokens in %.3f s (%.1f tok/s); generated: %d tokens, %.1f tok/s after the first\n",
                    s.promptTokens, s.prefillSeconds, s.prefillTokensPerSecond, s.generatedTokens, s.decodeTokensPerSecond).data(using: .utf8)!)
            }
        }
    }
}
