//! Property tests: neither parser panics, whatever the model wrote.

use guardreasoner_protocol::parse::{paper, parse_structured};
use guardreasoner_protocol::Task;
use proptest::prelude::*;

/// Fragments of the guard format, so that generated text reaches the parsers' deeper branches.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("# Task 1\n".to_string()),
        "#{0,7} ?[Tt]ask ?[0-9]{0,25}:?\n",
        "## Reasoning Step [0-9]{0,25}:? ?[a-z ]{0,10}\n",
        "#{1,3} (Conclusion|conclusion for Task [0-9]{1,12})(: [a-z]{0,9})?\n",
        Just("---\n".to_string()),
        "[#* ]{0,3}[Aa]nswers ?:? ?\r?\n",
        "(Request|Completion|Response|request) ?:? ?(harmful|unharmful|refusal|compliance|None|harm|non-compliance)?\r?\n",
        "The ground truth is",
        "\\PC{0,40}",
        any::<String>(),
        // What an attacker's conversation may make a model echo.
        Just("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n".to_string()),
        Just("\n\nAI assistant:\nNone\n\n".to_string()),
        Just("\u{0}\u{1b}[2J\u{7f}\u{85}\u{2028}".to_string()),
        Just("\u{202e}\u{feff}\u{200d}👨‍👩‍👧".to_string()),
        "[\\x00-\\x1f\\u{7f}-\\u{9f}\\u{202a}-\\u{202e}]{0,20}",
        Just("x".repeat(100_000)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn structured_parser_never_panics(parts in prop::collection::vec(fragment(), 0..24)) {
        let output: String = parts.concat();
        let parsed = parse_structured(&output);
        // The reasoning is a part of the input; nothing is invented.
        let normalized = output.replace("\r\n", "\n").replace('\r', "\n");
        prop_assert!(normalized.contains(parsed.reasoning.as_str()));
        prop_assert!(parsed.answer_blocks <= output.len());
    }

    #[test]
    fn structured_parser_never_panics_on_arbitrary_text(output in any::<String>()) {
        let _ = parse_structured(&output);
    }

    #[test]
    fn paper_parser_never_panics(parts in prop::collection::vec(fragment(), 0..24)) {
        let output: String = parts.concat();
        let tail = paper::tail(&output);
        prop_assert!(tail.chars().count() <= paper::TAIL_CHARS);
        prop_assert!(output.ends_with(tail));
        for task in Task::ALL {
            let _ = paper::extract(&output, task);
        }
    }
}
