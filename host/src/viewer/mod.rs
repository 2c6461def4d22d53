//! `tree.html`: one self-contained page (inline script and style, the report embedded as
//! JSON; nothing fetched) that shows a run's search tree. The page itself is
//! `viewer/tree.html`; this module only embeds the data.

use crate::report::RunReport;

/// The page, with [`DATA_SLOT`] where the report goes.
const TEMPLATE: &str = include_str!("tree.html");

/// Replaced by the report's JSON inside `<script type="application/json">`.
const DATA_SLOT: &str = "{\"__drpo_report__\":null}";

/// The viewer page for `report`.
pub fn render(report: &RunReport) -> String {
    let json = serde_json::to_string(report).expect("a report always serialises");
    TEMPLATE.replacen(DATA_SLOT, &script_safe(&json), 1)
}

/// JSON that cannot end the `<script>` element it sits in: every `<` (and so every `</script`
/// and `<!--`) is written as the JSON escape `\u003c`, which parses back to the same text.
/// `&` and `>` are escaped too so the text also reads the same in any HTML context.
fn script_safe(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::types::{Node, Outcome};
    use crate::report::StrategyName;

    #[test]
    fn the_template_has_one_data_slot() {
        assert_eq!(TEMPLATE.matches(DATA_SLOT).count(), 1);
    }

    #[test]
    fn hostile_prompts_cannot_close_the_data_script() {
        let prompt = "</script><script>alert(1)</script><!-- & \u{2028}".to_string();
        let node = Node {
            id: 0,
            parent: None,
            depth: 0,
            prompt: prompt.clone(),
            reward: 1.0,
            details: "{}".into(),
        };
        let outcome = Outcome {
            best_prompt: Some(prompt.clone()),
            best_score: None,
            best_path: vec![0],
            details: String::new(),
        };
        let strategy = StrategyName {
            name: "x".into(),
            version: "1".into(),
        };
        let (tree, refused) = crate::tree::Tree::of([node]);
        let report = RunReport::new(strategy, Ok(&outcome), &tree, &refused);
        let page = render(&report);
        let start = page
            .find("<script type=\"application/json\" id=\"report\">")
            .unwrap();
        let data = &page[start..];
        let data = &data[data.find('>').unwrap() + 1..data.find("</script>").unwrap()];
        assert!(!data.contains('<'));
        let parsed: RunReport = serde_json::from_str(data).unwrap();
        assert_eq!(parsed.tree[0].prompt, prompt);
    }

    #[test]
    fn the_page_fetches_nothing() {
        for external in [
            "<link",
            " src=",
            "@import",
            "url(",
            "fetch(",
            "XMLHttpRequest",
        ] {
            assert!(
                !TEMPLATE.contains(external),
                "tree.html contains {external}"
            );
        }
    }
}
