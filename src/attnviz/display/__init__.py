"""How results show themselves: notebook views (registered for the result classes, which never
import this package), the offline HTML report and its assets, and what a report holds."""
