import Foundation

/// A Hugging Face chat template (the Jinja source from `tokenizer_config.json` or GGUF
/// `tokenizer.chat_template`), parsed once and rendered for a conversation.
///
/// Renders like `transformers`' `apply_chat_template`: Jinja2 with `trim_blocks=True, lstrip_blocks=True`,
/// the `loopcontrols` extension (`{% break %}`, `{% continue %}`), `raise_exception(msg)`, `strftime_now(fmt)`
/// and a `tojson` that is `json.dumps(x, ensure_ascii=False)`.
///
/// The supported Jinja subset: text, `{{ }}`, `{% if/elif/else %}`, `{% for %}` (tuple targets, `if` filter,
/// `else`, the `loop` object), `{% set %}` (names, tuples, `ns.attr`, block form), `{% macro %}`,
/// `{% filter %}`, `{% with %}`, `{% raw %}`, `{% generation %}`, comments and whitespace control; Python-style
/// expressions, literals, subscripts and slices, filters, tests and string/dict methods.
/// Anything else fails with a `ChatTemplateError` naming the construct and its line:column. Rendering is
/// bounded: 16 MiB of output, one million loop iterations, macro recursion 40 deep.
public struct ChatTemplate: Sendable {
    public let source: String
    let body: [Node]

    /// Parses `source`; syntax errors throw `ChatTemplateError`.
    public init(_ source: String) throws {
        self.source = source
        body = try onLargeStack {
            var lexer = JinjaLexer(source)
            var parser = JinjaParser(tokens: try lexer.tokenize())
            return try parser.parseTemplate()
        }
    }

    /// Renders the template. The context holds `messages` (objects with `role` and `content`),
    /// `add_generation_prompt`, `bos_token`, `eos_token`, then `variables` (which may replace any of these,
    /// e.g. `messages` with extra keys, or add `tools`, `date_string`, ...). Objects in `variables` present
    /// their keys in sorted order.
    /// `now` pins the clock `strftime_now(fmt)` reads (formatted in UTC); nil: the current local time, as
    /// transformers' `datetime.now().strftime(fmt)` (Llama 3.2's template prints "Today Date: " from it).
    public func render(messages: [ChatMessage], addGenerationPrompt: Bool,
                       bosToken: String = "", eosToken: String = "",
                       variables: [String: JinjaValue] = [:], now: Date? = nil) throws -> String {
        let body = self.body
        return try onLargeStack {
            try Self.render(body, messages: messages, addGenerationPrompt: addGenerationPrompt, bosToken: bosToken,
                            eosToken: eosToken, variables: variables, now: now)
        }
    }

    private static func render(_ body: [Node], messages: [ChatMessage], addGenerationPrompt: Bool, bosToken: String,
                               eosToken: String, variables: [String: JinjaValue], now: Date?) throws -> String {
        let scope = Scope(parent: nil)
        scope.vars["messages"] = .list(messages.map { m in
            var d = PyDict()
            d["role"] = .string(m.role)
            d["content"] = .string(m.content)
            return .dict(d)
        })
        scope.vars["add_generation_prompt"] = .bool(addGenerationPrompt)
        scope.vars["bos_token"] = .string(bosToken)
        scope.vars["eos_token"] = .string(eosToken)
        for (k, v) in variables { scope.vars[k] = Value(v) }
        return try JinjaInterpreter(now: now).render(body, scope: scope)
    }
}

private final class ResultBox<T>: @unchecked Sendable {
    var result: Result<T, Error>?
}

/// Runs `body` on a fresh thread with a 64 MiB stack and waits for it. Parsing and rendering recurse once per
/// nesting level; their depth is capped, and this makes the cap safe whatever thread (and stack size) calls us.
private func onLargeStack<T>(_ body: @escaping @Sendable () throws -> T) throws -> T {
    let box = ResultBox<T>()
    let done = DispatchSemaphore(value: 0)
    let thread = Thread {
        box.result = Result { try body() }
        done.signal()
    }
    thread.stackSize = 64 << 20
    thread.start()
    done.wait()
    return try box.result!.get()
}
