import ArgumentParser
import CausalLM
import Foundation

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the token ids of a text as a JSON array.")
    @OptionGroup var modelOptions: ModelOptions
    @Flag(name: .long, help: "Without special tokens: special-token text such as <|im_start|> is plain text (byte-level BPE); nothing is added around the text, such as T5's </s> (SentencePiece).") var noSpecial = false
    @Argument(help: "The text.") var text: String

    func run() throws {
        try reportingErrors {
            let tok = try modelOptions.tokenizer()
            let ids: [Int]
            switch tok {
            case let bpe as ByteLevelBPETokenizer: ids = bpe.encode(text, parseSpecial: !noSpecial)
            case let unigram as UnigramTokenizer: ids = try unigram.encode(text, addSpecialTokens: !noSpecial)
            default: ids = try tok.encode(text)
            }
            writeOut("[" + ids.map(String.init).joined(separator: ", ") + "]\n")
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
            writeOut(try tok.decode(ids, skipSpecial: false) + "\n")
        }
    }
}
