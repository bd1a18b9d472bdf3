import ArgumentParser
import CausalLM
import Foundation

struct Chat: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Chat interactively. The conversation and its KV cache carry over between turns.",
        discussion: "Commands: /reset starts over, /exit (or Ctrl-D) quits.")

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var sampling: SamplingOptions
    @OptionGroup var deviceOptions: DeviceOptions
    @Option(name: .long, help: "A system message.") var system: String?
    @Option(name: .long, help: ArgumentHelp("Apply a LoRA adapter: a PEFT directory for this model (docs/adapters.md).", valueName: "dir"))
    var adapter: String?

    func run() throws {
        try reportingErrors {
            if adapter != nil { try deviceOptions.refuse("LoRA adapters run on the CPU only (--device cpu)") }
            let bundle = try modelOptions.load()
            try deviceOptions.apply(bundle)
            let session = ChatSession(bundle: bundle, system: system, adapter: try loadAdapter(adapter, for: bundle))
            let interactive = isatty(0) != 0
            while true {
                if interactive { writeOut("> ") }
                guard let line = readLine() else { break }
                let text = line.trimmingCharacters(in: .whitespaces)
                if text.isEmpty { continue }
                if text == "/exit" || text == "/quit" { break }
                if text == "/reset" {
                    session.reset()
                    writeOut("(conversation reset)\n")
                    continue
                }
                do {
                    _ = try session.respond(text, parameters: sampling.parameters, onText: { writeOut($0) })
                    writeOut("\n")
                } catch let e as CausalError {
                    FileHandle.standardError.write("causal: error: \(e)\n".data(using: .utf8)!)
                }
            }
        }
    }
}
