import ArgumentParser
import CausalLM
import Foundation

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the token ids of a text as a JSON array.")
    @OptionGroup var modelOptions: ModelOptions
    @Flag(name: .long, help: "Treat special-token text such as <|im_start|> as plain text.") var noSpecial = false
    @Argument(help: "The text.") var text: String

    func run() throws {
        try reportingErrors {
            let tok = try modelOptions.tokenizer()
            writeOut("[" + tok.encode(text, parseSpecial: !noSpecial).map(String.init).joined(separator: ", ") + "]\n")
        }
    }
}

struct Detokenize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the text of token ids.")
    @OptionGroup var modelOptions: ModelOptions
    @Argument(help: "Token ids.") var ids: [Int]

    func run() throws {
        try reportingErrors {
            let tok = try modelOptions.tokenizer()
            writeOut(try tok.decode(ids) + "\n")
        }
    }
}
